"""Identity that survives the real world (issue 8): touched and restored files, rewritten task
tables, late links, future mtimes, no stalls, lineage against the readers.

End to end: the real ``docwatch`` process (``scan``, ``watch``, ``verify``, ``show``, …) on
real files under tmp_path, a real SQLite index, real signals and a real sd_notify socket.
Every document root here uses the default layout (``<data>/db``, ``<data>/docs``), so a fresh
scan of a copy of the finished tree has the same ``doc_dir`` values and can be compared row
for row.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import legacy_tree
import pytest
from click.testing import CliRunner
from conftest import Files, assert_tombstones, docs_tree, snapshot
from docwatch import DocumentsIndex
from docwatch.cli import main as cli_main
from docwatch.config import load_config
from docwatch.ingest.scan import scan as scan_in_process
from support import NotifySocket, kill_if_running, wait_until

REPO = Path(__file__).resolve().parents[1]
STAGE_FOLDERS = {
    kind: [f[kind] for f in legacy_tree.FOLDERS.values()] for kind in legacy_tree.KINDS
}
STAGE_FOLDERS["prompt"].append(legacy_tree.LINKS["prompt"])
STAGE_FOLDERS["parsed"].append(legacy_tree.LINKS["parsed"])
TABLES = ("draft_generation_tasks", "essay_generation_tasks", "evaluation_tasks")
OLD = 1_700_000_000  # an mtime in the past (2023-11)
HOUR = 3600
# A scan reads what it lists at once; the daemon waits for its settle rule (as in production,
# only shorter).  No periodic reconcile unless a test asks for one.
SCAN_CONFIG = 'settle_seconds = 0\nlog_level = "WARNING"\n'
WATCH_CONFIG = 'settle_seconds = 0.5\nreconcile_interval = "1h"\nlog_level = "INFO"\n'


# -- the real process ----------------------------------------------------------------------


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DOCWATCH_", "NOTIFY_SOCKET", "WATCHDOG_"))
    }
    return env | (extra or {})


class Root:
    """A legacy data root with the index in its default place, and a config file for it."""

    def __init__(self, tmp_path: Path, name: str = "data", config: str = SCAN_CONFIG) -> None:
        self.tmp = tmp_path
        self.data = tmp_path / name
        self.data.mkdir(exist_ok=True)
        self.db = self.data / "db" / "documents.sqlite"
        self.docs = self.data / "docs"
        self.config = tmp_path / f"{name}.toml"
        self.config.write_text(config)
        self.procs: list[subprocess.Popen] = []

    def args(self) -> list[str]:
        return ["--config", str(self.config), "--data-root", str(self.data)]

    def run(self, command: str, *more, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "docwatch", command, *self.args(), *map(str, more)],
            cwd=REPO,
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def scan(self) -> dict:
        out = self.run("scan", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        return json.loads(out.stdout)

    def verify(self) -> None:
        out = self.run("verify")
        assert out.returncode == 0, out.stdout + out.stderr

    def latest(self, stage: str, task_id: str) -> dict:
        out = self.run("latest", stage, task_id, "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        return json.loads(out.stdout)

    def show(self, doc_id: str) -> dict:
        out = self.run("show", doc_id, "--json")
        assert out.returncode == 0, f"show {doc_id}: {out.stdout}{out.stderr}"
        return json.loads(out.stdout)

    # -- the daemon --

    def start(self, notify: NotifySocket | None, extra_env: dict[str, str] | None = None):
        env = _clean_env(extra_env)
        if notify is not None:
            env |= {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"}
        log = open(self.tmp / f"watch-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "docwatch", "watch", *self.args()],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        proc.log_path = log.name
        self.procs.append(proc)
        return proc

    def log(self, proc) -> str:
        return Path(proc.log_path).read_text(errors="replace")

    def wait_ready(self, proc, notify: NotifySocket, n: int = 1, timeout: float = 60) -> None:
        wait_until(
            lambda: notify.count("READY=1") >= n or proc.poll() is not None, timeout, what="READY"
        )
        assert proc.poll() is None, "watch died before READY=1:\n" + self.log(proc)

    def stop(self, proc) -> None:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(20)
        except subprocess.TimeoutExpired:
            pytest.fail("watch did not exit within 20s of SIGTERM:\n" + self.log(proc))
        assert rc == 0, self.log(proc)

    def cleanup(self) -> None:
        for p in self.procs:
            kill_if_running(p)

    def caught_up(self) -> bool:
        """A dry-run scan finds nothing new or deferred: every settled file is in the ledger."""
        if not self.db.exists():
            return False
        cfg = load_config(self.config, {}, {"data_root": self.data})
        result = scan_in_process(cfg, run_id="probe", dry_run=True)
        return sum(c["new"] + c["deferred"] for c in result.counts.values()) == 0

    def wait_caught_up(self, proc, timeout: float = 60) -> None:
        try:
            wait_until(lambda: proc.poll() is not None or self.caught_up(), timeout, 0.3)
        except AssertionError:
            pytest.fail(
                f"the daemon did not catch up in {timeout}s; its log:\n{self.log(proc)[-3000:]}"
            )
        assert proc.poll() is None, "watch died:\n" + self.log(proc)


@pytest.fixture
def roots(tmp_path):
    made: list[Root] = []

    def make(name: str = "data", config: str = SCAN_CONFIG) -> Root:
        made.append(Root(tmp_path, name, config))
        return made[-1]

    yield make
    for r in made:
        r.cleanup()


@pytest.fixture
def notify():
    n = NotifySocket()
    yield n
    n.close()


# -- what the index holds ------------------------------------------------------------------


def all_rows(db: Path) -> dict[str, tuple]:
    """doc_id → every column but run_id, of every document (superseded ones included)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        cols = [r[1] for r in con.execute("PRAGMA table_info(documents)") if r[1] != "run_id"]
        rows = con.execute(f"SELECT {', '.join(cols)} FROM documents").fetchall()
    finally:
        con.close()
    return {r[0]: r for r in rows}


def docs_files(docs: Path) -> Files:
    """Every file of every document directory, metadata.json and superseded ones included."""
    return Files(
        (str(p.relative_to(docs)), p.read_bytes())
        for stage in ("draft", "essay", "evaluation")
        if (docs / stage).is_dir()
        for p in sorted((docs / stage).rglob("*"))
        if p.is_file()
    )


def meta_rows(docs: Path) -> dict[str, dict]:
    """doc_id → the row its metadata.json holds (minus run_id)."""
    out = {}
    for meta in docs.glob("*/*/metadata.json"):
        row = json.loads(meta.read_text())["row"]
        row.pop("run_id", None)
        out[row["doc_id"]] = row
    return out


def query(db: Path, sql: str, args=()) -> list[sqlite3.Row]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def task_docs(db: Path, task_id: str) -> list[sqlite3.Row]:
    if not db.exists():
        return []
    return query(db, "SELECT * FROM documents WHERE task_id = ?", (task_id,))


def sources(data: Path, kinds=("prompt", "raw", "parsed")) -> list[Path]:
    """Every regular file of the pipeline's stage folders (pipeline output and noise)."""
    return sorted(
        p
        for kind in kinds
        for folder in STAGE_FOLDERS[kind]
        if (data / folder).is_dir()
        for p in (data / folder).iterdir()
        if p.is_file()
    )


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def assert_same_as_fresh_scan(root: Root, copy_tree) -> None:
    """The visible documents equal a ``docwatch scan`` of a copy of the finished tree on an
    empty index (rows and file bytes)."""
    fresh = Root(root.tmp, f"fresh-{root.data.name}")
    shutil.rmtree(fresh.data)
    copy_tree(root.data, fresh.data)  # copy2: mtimes kept; db/ and docs/ left behind
    fresh.scan()
    mine, theirs = snapshot(root.db), snapshot(fresh.db)
    diff = sorted(changed(mine, theirs))
    assert not diff, "\n".join(f"index: {mine.get(d)}\nscan:  {theirs.get(d)}" for d in diff[:6])
    assert docs_tree(root.docs) == docs_tree(fresh.docs)


def write_atomic(path: Path, data: bytes, mtime: float | None = None) -> None:
    """As the IO manager (or rsync) does: a temp name, then a rename into place; the mtime
    (when given) is set on the temp file, so the final name appears with it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    if mtime is not None:
        os.utime(tmp, (mtime, mtime))
    os.replace(tmp, path)


def write_old(path: Path, data: bytes, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def cli_in_process(*args) -> tuple[int, str]:
    """The same click command in this process (cheap for checking hundreds of ids)."""
    result = CliRunner().invoke(cli_main, [str(a) for a in args], env={"DOCWATCH_CONFIG": ""})
    return result.exit_code, result.output


def ping_gaps(notify: NotifySocket, start: float, end: float) -> float:
    """The longest stretch in [start, end] without a WATCHDOG=1 (window ends included)."""
    pings = [t for t, m in list(notify.received) if "WATCHDOG=1" in m.splitlines()]
    marks = [start, *(t for t in pings if start <= t <= end), end]
    return max(b - a for a, b in zip(marks, marks[1:], strict=False))


# -- 1. a touch (same bytes, new mtime) changes nothing ---------------------------------------


def test_touching_one_parsed_file_then_rescanning_changes_nothing(roots):
    root = roots()
    summary = legacy_tree.build_tree(root.data, combos=2, seed=21)
    root.scan()
    attempt = next(
        a for a in summary.expected if a.stage == "draft" and a.raw and a.parsed and a.prompt
    )
    before_latest = root.latest("draft", attempt.task_id)["doc_id"]
    rows, files = all_rows(root.db), docs_files(root.docs)

    os.utime(root.data / attempt.parsed)  # touch: now, same bytes
    result = root.scan()

    created = sum(s["docs_created"] for s in result["stages"].values())
    updated = sum(s["docs_updated"] for s in result["stages"].values())
    assert (created, updated) == (0, 0), result
    assert root.latest("draft", attempt.task_id)["doc_id"] == before_latest
    assert all_rows(root.db) == rows
    assert docs_files(root.docs) == files


def touch_everything(data: Path, seed: int) -> int:
    """A new mtime for every source file, some in the future, some in the past."""
    rng = random.Random(seed)
    now = time.time()
    files = sources(data)
    for p in files:
        when = now + rng.uniform(1, 2) * HOUR if rng.random() < 0.5 else OLD - rng.uniform(0, 1e7)
        os.utime(p, (when, when))
    return len(files)


def test_touching_every_source_of_a_tree_then_rescanning_changes_nothing(roots):
    root = roots()
    legacy_tree.build_tree(root.data, combos=10, seed=22)
    root.scan()
    rows, files = all_rows(root.db), docs_files(root.docs)

    assert touch_everything(root.data, seed=1) > 500
    result = root.scan()

    assert all(s["docs_created"] == s["docs_updated"] == 0 for s in result["stages"].values())
    assert not result["problems"], result["problems"]
    root.verify()
    assert all_rows(root.db) == rows
    assert docs_files(root.docs) == files

    # The facts stay pinned when the tasks are planned again: a new attempt of every draft task
    # re-plans its older attempts, whose order and created_at still come from the first sight.
    raw_folder = root.data / legacy_tree.FOLDERS["draft"]["raw"]
    tasks = {p.name.rsplit("_v", 1)[0] for p in raw_folder.glob("*_v*.txt")}
    for task in tasks:
        (raw_folder / f"{task}_v9.txt").write_text(f"a new attempt of {task}\n")
    root.scan()
    after = all_rows(root.db)
    changed = [d for d, r in rows.items() if r[2] == "draft" and after[d] != r]
    assert not changed, f"{len(changed)} earlier drafts changed when re-planned: {changed[:3]}"


def test_watch_meeting_touched_sources_at_start_up_gets_ready_and_changes_nothing(roots, notify):
    root = roots(config=WATCH_CONFIG)
    legacy_tree.build_tree(root.data, combos=3, seed=23)
    root.scan()
    rows, files = all_rows(root.db), docs_files(root.docs)
    touch_everything(root.data, seed=2)

    proc = root.start(notify)
    root.wait_ready(proc, notify)
    root.wait_caught_up(proc)  # files with a future mtime are read once settled
    time.sleep(1)
    assert proc.poll() is None, root.log(proc)
    assert all_rows(root.db) == rows
    assert docs_files(root.docs) == files
    root.stop(proc)
    root.verify()


def test_watch_meeting_touched_sources_live_changes_nothing(roots, notify):
    """Restored over the running daemon: a third rewritten in place (cp), a third renamed into
    place with an old or future mtime (rsync), a third only touched (met by the reconcile)."""
    root = roots(config=WATCH_CONFIG.replace('"1h"', '"2s"'))
    legacy_tree.build_tree(root.data, combos=3, seed=24)
    root.scan()
    rows, files = all_rows(root.db), docs_files(root.docs)
    proc = root.start(notify)
    root.wait_ready(proc, notify)

    rng, now = random.Random(3), time.time()
    for i, p in enumerate(sources(root.data)):
        data = p.read_bytes()
        when = now + HOUR if rng.random() < 0.5 else OLD - rng.uniform(0, 1e7)
        if i % 3 == 0:
            p.write_bytes(data)  # in place: IN_CLOSE_WRITE
        elif i % 3 == 1:
            write_atomic(p, data, mtime=when)  # IN_MOVED_TO
        else:
            os.utime(p, (when, when))  # no event the daemon asks for: the reconcile finds it
    time.sleep(3)  # at least one reconcile pass
    root.wait_caught_up(proc)
    time.sleep(1)

    assert proc.poll() is None, root.log(proc)
    assert all_rows(root.db) == rows
    assert docs_files(root.docs) == files
    root.stop(proc)
    root.verify()


# -- 2. a restore in two passes: ids once visible never vanish -------------------------------


def restore(orig: Path, dest: Path, kinds: tuple[str, ...], *, tables: bool, live: bool) -> None:
    """Copy files of some kinds with their mtimes (copy2); ``live``: into a temp name and then
    renamed into place, as rsync does, so the final name never shows the copy's own mtime."""
    files = sources(orig, kinds)
    if tables:
        files = [*sorted((orig / "1_raw").glob("*")), *sorted((orig / "2_tasks").glob("*")), *files]
    for src in files:
        dst = dest / src.relative_to(orig)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if live:
            tmp = dst.with_name(f".{dst.name}.restore")
            shutil.copy2(src, tmp)
            os.replace(tmp, dst)
        else:
            shutil.copy2(src, dst)


@pytest.mark.parametrize("mode", ["scan", "watch"])
def test_a_two_pass_restore_never_loses_a_visible_doc_id(roots, notify, copy_tree, mode):
    orig = roots("orig")
    legacy_tree.build_tree(orig.data, combos=3, seed=25)
    root = roots(config=WATCH_CONFIG if mode == "watch" else SCAN_CONFIG)
    live = mode == "watch"
    proc = None
    if live:
        proc = root.start(notify)
        root.wait_ready(proc, notify)

    def index() -> None:
        if live:
            root.wait_caught_up(proc)
        else:
            root.scan()

    restore(orig.data, root.data, ("prompt", "parsed"), tables=True, live=live)
    index()
    seen = {d for d, r in snapshot(root.db).items()}
    restore(orig.data, root.data, ("raw",), tables=False, live=live)
    index()
    if live:
        root.stop(proc)

    visible = set(snapshot(root.db))
    everything = all_rows(root.db)
    gone = seen - visible
    assert gone, "the restore should have superseded parsed-only documents (test is vacuous)"
    # every id seen after pass 1 still resolves, with its directory
    for doc_id in sorted(seen):
        code, out = cli_in_process("show", doc_id, "--json", *root.args())
        assert code == 0, f"show {doc_id}: {out}"
        shown = json.loads(out)
        assert Path(shown["path"]).is_dir()
        assert (shown["status"] == "superseded") == (doc_id in gone), shown
    for doc_id in sorted(gone)[:2]:  # and through the real process
        shown = root.show(doc_id)
        assert shown["status"] == "superseded" and shown["meta_small"]["superseded_by"] in visible
    assert assert_tombstones(root.db, root.docs) == len(everything) - len(visible) >= len(gone)

    # latest never returns a superseded document, whatever statuses are asked for
    statuses = ("ok", "pending", "parse_error", "gen_error", "superseded")
    every_status = [arg for s in statuses for arg in ("--status", s)]
    for doc_id in sorted(gone):
        row = everything[doc_id]
        code, out = cli_in_process("latest", row[2], row[3], "--json", *every_status, *root.args())
        assert code == 0, out
        assert json.loads(out)["status"] != "superseded"

    # status counts them, verify accepts them, rebuild-index restores them
    out = root.run("status", "--json")
    assert out.returncode == 0, out.stderr
    by_stage = json.loads(out.stdout)["by_stage"]
    for stage in ("draft", "essay", "evaluation"):
        want = sum(1 for r in everything.values() if r[2] == stage and r[9] == "superseded")
        assert by_stage.get(stage, {}).get("superseded", 0) == want, by_stage
    root.verify()
    rebuilt = root.run("rebuild-index", "--json")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert all_rows(root.db) == everything
    root.verify()

    assert_same_as_fresh_scan(root, copy_tree)


# -- 3. task tables rewritten for a new experiment -------------------------------------------


def rewrite_tables(data: Path, edit=lambda name, rows: rows) -> None:
    """Rewrite the three task tables in place (as pandas ``to_csv`` does: header, rows, LF);
    ``edit(name, rows)`` returns the rows to write."""
    for name in TABLES:
        path = data / "2_tasks" / f"{name}.csv"
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header, rows = reader.fieldnames, list(reader)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(edit(name, rows))
        path.write_text(buf.getvalue(), encoding="utf-8")


@pytest.mark.parametrize("mode", ["scan", "watch"])
def test_task_tables_rewritten_to_a_header_keep_every_documents_facts(roots, notify, mode):
    root = roots(config=WATCH_CONFIG if mode == "watch" else SCAN_CONFIG)
    legacy_tree.build_tree(root.data, combos=3, seed=26)
    root.scan()
    rows, metas = all_rows(root.db), meta_rows(root.docs)
    originals = {n: (root.data / "2_tasks" / f"{n}.csv").read_text() for n in TABLES}
    evals = list(csv.DictReader(io.StringIO(originals["evaluation_tasks"])))
    essays_with_parent = [r for r in rows.values() if r[2] == "essay" and r[4] is not None]
    assert essays_with_parent and evals
    proc = None
    if mode == "watch":
        proc = root.start(notify)
        root.wait_ready(proc, notify)

    def reindex(probe_task: str) -> dict:
        """Scan, or (watch) wait until a new file written after the change is indexed: the
        daemon reads the tables before every batch; then give any re-plan time to run."""
        if proc is None:
            root.scan()
        else:
            write_atomic(
                root.data / "4_evaluation/evaluation_responses" / f"{probe_task}_v1.txt", b"x\n"
            )
            wait_until(lambda: task_docs(root.db, probe_task), 30, what="the probe indexed")
            time.sleep(2)
            root.wait_caught_up(proc)
        return {k: v for k, v in all_rows(root.db).items() if not v[3].startswith("probe")}

    rewrite_tables(root.data, lambda name, rows: [])  # a new experiment: header only
    assert reindex("probe1__novelty__sonnet-4") == rows
    assert {k: v for k, v in meta_rows(root.docs).items() if v["task_id"][:5] != "probe"} == metas

    # the tables come back, one task with another template: that task alone is re-planned
    indexed_tasks = {r[3] for r in rows.values()}
    victim = next(e for e in evals if e["evaluation_task_id"] in indexed_tasks)
    new_template = "style-coherence-v2"
    assert victim["evaluation_template"] != new_template

    def changed_template(name, _rows):
        table = list(csv.DictReader(io.StringIO(originals[name])))
        for r in table:
            if r.get("evaluation_task_id") == victim["evaluation_task_id"]:
                r["evaluation_template"] = new_template
        return table

    rewrite_tables(root.data, changed_template)
    after = reindex("probe2__novelty__sonnet-4")
    if proc is not None:
        root.stop(proc)
    moved = changed(rows, after)
    victims = {d for d, r in rows.items() if r[3] == victim["evaluation_task_id"]}
    assert victims and moved == victims
    assert all(after[d][5] == new_template for d in victims)


# -- 4. a late link for a parent whose stage cannot be told -----------------------------------

ESSAY_TARGET = "combo_late__no-such-template__sonnet-4"  # template in neither table
DRAFT_TARGET = "combo_late__creative-synthesis-v7__sonnet-4"  # template in both tables


@pytest.mark.parametrize("mode", ["scan", "watch"])
def test_an_evaluation_of_a_target_of_unknown_stage_is_linked_when_the_target_arrives(
    roots, notify, copy_tree, mode
):
    root = roots(config=WATCH_CONFIG if mode == "watch" else SCAN_CONFIG)
    legacy_tree._copy_templates(root.data, None)  # template tables, no task tables
    evals = {t: f"{t}__novelty__sonnet-4" for t in (ESSAY_TARGET, DRAFT_TARGET)}
    for i, task in enumerate(evals.values()):
        write_old(root.data / "4_evaluation/evaluation_prompts" / f"{task}_v1.txt", b"p", OLD + i)
        write_old(root.data / "4_evaluation/evaluation_responses" / f"{task}_v1.txt", b"e", OLD + 9)
    root.scan()
    for task in evals.values():
        (row,) = task_docs(root.db, task)
        assert row["parent_doc_id"] is None
    proc = None
    if mode == "watch":
        proc = root.start(notify)
        root.wait_ready(proc, notify)

    # the targets arrive later, written (restored) before their evaluations were
    essay = root.data / "3_generation/essay_responses" / f"{ESSAY_TARGET}_v1.txt"
    draft = root.data / "3_generation/draft_responses" / f"{DRAFT_TARGET}_v1.txt"
    write_atomic(essay, b"an essay\n", OLD - 50)
    write_atomic(draft, b"a draft\n", OLD - 60)
    if proc is None:
        root.scan()
    else:

        def linked() -> bool:
            rows = [task_docs(root.db, t) for t in evals.values()]
            return all(r and r[0]["parent_doc_id"] for r in rows)

        wait_until(linked, 30, what="the evaluations linked live")
        root.stop(proc)

    for target, task in evals.items():
        (parent,) = task_docs(root.db, target)
        (row,) = task_docs(root.db, task)
        assert row["parent_doc_id"] == parent["doc_id"], (task, dict(row))
        meta = json.loads((root.docs / "evaluation" / row["doc_id"] / "metadata.json").read_text())
        assert meta["row"]["parent_doc_id"] == parent["doc_id"]
        assert meta["row"]["logical_key_id"] == row["logical_key_id"]
    assert_same_as_fresh_scan(root, copy_tree)


# -- 5. future mtimes: read once complete, never a partial file --------------------------------


class SlowWriter(threading.Thread):
    """Writes a raw file in place, a little every 0.1 s, keeping its mtime an hour ahead,
    until ``finish`` is set; then closes it (IN_CLOSE_WRITE)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.finish = threading.Event()
        self.written = b""
        self.future = time.time() + HOUR
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "wb")  # noqa: SIM115  (created empty, kept open)
        os.utime(path, (self.future, self.future))

    def run(self) -> None:
        n = 0
        while not self.finish.wait(0.1):
            chunk = b"line %d of a slow response\n" % n
            self.f.write(chunk)
            self.f.flush()
            self.written += chunk
            os.utime(self.path, (self.future, self.future))
            n += 1
        self.f.close()

    def done(self) -> bytes:
        self.finish.set()
        self.join(10)
        return self.written


def test_watch_reads_a_file_with_a_future_mtime_only_once_written_and_closed(roots, notify):
    root = roots(config=WATCH_CONFIG.replace("settle_seconds = 0.5", "settle_seconds = 2"))
    raw = root.data / "3_generation/draft_responses_raw"
    early = SlowWriter(raw / "early__creative-synthesis-v2__sonnet-4_v1.txt")  # met at start-up
    early.start()
    proc = root.start(notify)
    root.wait_ready(proc, notify)
    late = SlowWriter(raw / "late__creative-synthesis-v2__sonnet-4_v1.txt")  # created live
    late.start()
    tasks = ("early__creative-synthesis-v2__sonnet-4", "late__creative-synthesis-v2__sonnet-4")

    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:  # still being written: nothing may be indexed
        assert not any(task_docs(root.db, t) for t in tasks), "a file in writing was indexed"
        time.sleep(0.1)
    full = {tasks[0]: early.done(), tasks[1]: late.done()}
    wait_until(lambda: all(task_docs(root.db, t) for t in tasks), 30, what="both indexed")
    time.sleep(2)  # a second document would appear by now
    root.stop(proc)
    for task, data in full.items():
        (row,) = task_docs(root.db, task)
        assert (root.docs / "draft" / row["doc_id"] / "raw.txt").read_bytes() == data


def test_scan_reads_a_future_mtime_once_settled_and_defers_one_still_changing(roots):
    root = roots(config='settle_seconds = 1.5\nlog_level = "WARNING"\n')
    raw = root.data / "3_generation/draft_responses_raw"
    done_task = "done__creative-synthesis-v2__sonnet-4"
    data = b"a complete response\n" * 50
    write_old(raw / f"{done_task}_v1.txt", data, time.time() + HOUR)
    busy_task = "busy__creative-synthesis-v2__sonnet-4"
    busy = SlowWriter(raw / f"{busy_task}_v1.txt")
    busy.start()
    wait_until(lambda: busy.written, 5, what="the writer started")

    first = root.scan()
    (row,) = task_docs(root.db, done_task)
    assert (root.docs / "draft" / row["doc_id"] / "raw.txt").read_bytes() == data
    assert not task_docs(root.db, busy_task)

    full = busy.done()
    second = root.scan()
    (row,) = task_docs(root.db, busy_task)
    assert (root.docs / "draft" / row["doc_id"] / "raw.txt").read_bytes() == full
    # what each scan reported: the busy file deferred by the first, nothing by the second
    counts = [
        {k: r["stages"]["draft"][k] for k in ("docs_created", "deferred")} for r in (first, second)
    ]
    assert counts == [{"docs_created": 1, "deferred": 1}, {"docs_created": 1, "deferred": 0}]


# -- 6. no stalls: the watchdog stays fed ------------------------------------------------------

FAKE_DAGSTER = """\
#!/usr/bin/python3
# Stands in for the pipeline venv's Python running docwatch's events.py --serve: it takes
# the cursor, then hangs (60 s, or until its stdin closes) before answering.
import json, select, sys
cursor = sys.stdin.buffer.readline()
open({marker!r}, "w").write("asked\\n")
if not select.select([sys.stdin], [], [], 60)[0]:
    print(json.dumps({{"events": [], "cursor": json.loads(cursor)}}), flush=True)
"""


def test_a_hung_run_record_read_never_stalls_the_loop(roots, notify, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    marker = tmp_path / "asked"
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_DAGSTER.format(marker=str(marker)))
    fake.chmod(0o755)
    config = WATCH_CONFIG + f'dagster_home = "{home}"\ndagster_python = "{fake}"\n'
    root = roots(config=config)
    folder = root.data / "4_evaluation/evaluation_responses"
    folder.mkdir(parents=True)

    proc = root.start(notify)
    root.wait_ready(proc, notify, timeout=30)
    wait_until(marker.exists, 30, what="the run-record read to start (and hang)")
    start = time.time()
    for i in range(3):  # ~12 s while the read hangs: files keep being indexed
        task = f"stall{i}__novelty__sonnet-4"
        write_atomic(folder / f"{task}_v1.txt", b"evaluation %d\n" % i)
        wait_until(lambda t=task: task_docs(root.db, t), 10, what=f"{task} indexed")
        time.sleep(max(0.0, start + 4 * (i + 1) - time.time()))
    end = time.time()
    assert proc.poll() is None, root.log(proc)
    gap = ping_gaps(notify, start, end)
    print(f"longest watchdog gap while the read hung: {gap:.2f}s")
    assert gap <= 10, f"no WATCHDOG=1 for {gap:.1f}s"
    root.stop(proc)


def test_a_large_replan_after_a_table_rewrite_keeps_the_watchdog_fed(roots, notify):
    """2000 tasks change their facts at once.  The re-plan goes in chunks, a batch each (seen
    in the fault seam's trace: the whole re-plan in one turn of the loop would be one batch,
    however fast the machine), and pings keep coming: never a stretch over 10 s without one."""
    n, attempts = 2000, 1
    root = roots(config=WATCH_CONFIG)
    folder = root.data / "3_generation/draft_responses"
    folder.mkdir(parents=True)
    tasks = [f"c{i:05d}__tpl-x__model-a" for i in range(n)]
    for i, task in enumerate(tasks):
        for v in range(1, attempts + 1):
            write_old(folder / f"{task}_v{v}.txt", b"draft %d v%d\n" % (i, v), OLD + 10 * i + v)

    def table(model: str) -> None:
        head = "draft_task_id,combo_id,draft_template,generation_model,generation_model_name\n"
        body = "".join(f"{t},{t[:6]},tpl-x,{model},{model}\n" for t in tasks)
        (root.data / "2_tasks").mkdir(exist_ok=True)
        (root.data / "2_tasks" / "draft_generation_tasks.csv").write_text(head + body)

    table("model-a")
    trace = root.tmp / "replan.trace"
    proc = root.start(notify, {"DOCWATCH_TRACE": str(trace)})
    root.wait_ready(proc, notify)  # after the catch-up: everything indexed
    assert query(root.db, "SELECT count(*) FROM documents")[0][0] == n * attempts

    start = time.time()
    batches_before = trace.read_text().count(" committed\n")
    table("model-b")  # every task's facts change at once

    def replanned() -> bool:
        rows = query(root.db, "SELECT model_id, count(*) FROM documents GROUP BY 1")
        return dict(map(tuple, rows)) == {"model-b": n * attempts} or proc.poll() is not None

    wait_until(replanned, 120, 0.5, "every task re-planned")
    end = time.time()
    assert proc.poll() is None, root.log(proc)
    gap = ping_gaps(notify, start, end)
    print(f"re-plan of {n} tasks took {end - start:.1f}s; longest watchdog gap {gap:.2f}s")
    assert gap <= 10, f"no WATCHDOG=1 for {gap:.1f}s during the re-plan"
    batches = trace.read_text().count(" committed\n") - batches_before
    assert batches >= n // 400, f"the re-plan of {n} tasks went in {batches} batches"
    root.stop(proc)


# -- 7. lineage and the readers agree on the unversioned legacy file ---------------------------


def test_an_unversioned_file_is_the_oldest_attempt_for_lineage_and_readers(roots):
    root = roots()
    task = "combo_007__creative-synthesis-v2__sonnet-4"
    folder = root.data / "3_generation/draft_responses"
    write_old(folder / f"{task}_v1.txt", b"versioned\n", OLD)
    write_old(folder / f"{task}.txt", b"legacy, but touched later\n", OLD + 5000)
    root.scan()

    by_file = {
        json.loads(r["meta_small"])["sources"]["parsed"]: r for r in task_docs(root.db, task)
    }
    v1 = by_file[f"3_generation/draft_responses/{task}_v1.txt"]
    legacy = by_file[f"3_generation/draft_responses/{task}.txt"]
    assert root.latest("draft", task)["doc_id"] == v1["doc_id"]
    assert root.show(v1["doc_id"])["lineage_prev_doc_id"] == legacy["doc_id"]
    assert legacy["lineage_prev_doc_id"] is None
    with DocumentsIndex(root.db, root.docs) as idx:
        assert idx.get_latest_by_task("draft", task, status="ok")["doc_id"] == v1["doc_id"]


# -- 8. an ingested file rewritten in place is a new attempt -----------------------------------


@pytest.mark.parametrize("mode", ["scan", "watch"])
def test_an_ingested_file_rewritten_in_place_is_a_new_attempt_the_old_stays(roots, notify, mode):
    root = roots(config=WATCH_CONFIG if mode == "watch" else SCAN_CONFIG)
    task = "combo_008__creative-synthesis-v2__sonnet-4__novelty__sonnet-4"
    path = root.data / "4_evaluation/evaluation_responses" / f"{task}_v1.txt"
    write_old(path, b"first bytes\n", OLD)
    root.scan()
    (old,) = task_docs(root.db, task)
    proc = None
    if mode == "watch":
        proc = root.start(notify)
        root.wait_ready(proc, notify)

    path.write_bytes(b"second bytes, same name\n")  # in place: IN_CLOSE_WRITE
    if proc is None:
        root.scan()
    else:
        wait_until(lambda: len(task_docs(root.db, task)) >= 2, 30, what="the new attempt")
        time.sleep(1)
        root.stop(proc)

    docs = {r["doc_id"]: r for r in task_docs(root.db, task)}
    assert len(docs) == 2 and old["doc_id"] in docs
    new_id = next(d for d in docs if d != old["doc_id"])
    latest = root.latest("evaluation", task)
    assert latest["doc_id"] == new_id
    assert (Path(latest["path"]) / "parsed.txt").read_bytes() == b"second bytes, same name\n"
    shown = root.show(old["doc_id"])
    assert (Path(shown["path"]) / "parsed.txt").read_bytes() == b"first bytes\n"
    root.verify()


@pytest.mark.parametrize("moved", [1, -86400], ids=["mtime-later", "mtime-earlier"])
def test_a_rewrite_of_the_same_size_is_read_again_by_a_rescan(roots, moved):
    """A rescan skips a known file only when both its size and its mtime are the ledger's: new
    bytes of the same length, with an mtime a second later or a day earlier (a backup's older
    copy restored), are a new attempt, not a known file."""
    root = roots(config=SCAN_CONFIG)
    task = "combo_008__creative-synthesis-v2__sonnet-4__novelty__sonnet-4"
    path = root.data / "4_evaluation/evaluation_responses" / f"{task}_v1.txt"
    write_old(path, b"first bytes\n", OLD)
    root.scan()
    (old,) = task_docs(root.db, task)
    write_old(path, b"other bytes\n", OLD + moved)  # the same length
    root.scan()
    docs = {r["doc_id"] for r in task_docs(root.db, task)}
    assert len(docs) == 2 and old["doc_id"] in docs
    (new_id,) = docs - {old["doc_id"]}  # which one is latest follows the mtimes (section 1)
    assert (Path(root.show(new_id)["path"]) / "parsed.txt").read_bytes() == b"other bytes\n"


def test_a_prompt_rewritten_before_its_attempt_arrives_is_recorded_unavailable(roots):
    """The pipeline never rewrites a version, but a person can: a prompt rewritten in place
    after docwatch read it, then a raw dated between the two versions.  Its prompt is the old
    version (by mtime), whose bytes no file holds any more: the document records the prompt
    path and that its bytes are gone, verify accepts it, and the scan does not retry forever."""
    root = roots()
    task = "combo_008__creative-synthesis-v2__sonnet-4"
    prompt = root.data / "3_generation/draft_prompts" / f"{task}_v1.txt"
    write_old(prompt, b"the prompt as first written\n", OLD)
    root.scan()  # the prompt is in the ledger; no document uses it yet
    write_old(prompt, b"the prompt rewritten by hand\n", OLD + 200)
    write_old(root.data / "3_generation/draft_responses_raw" / f"{task}_v1.txt", b"r\n", OLD + 100)
    write_old(root.data / "3_generation/draft_responses" / f"{task}_v1.txt", b"p\n", OLD + 101)
    first = root.scan()
    assert sum(s["docs_created"] for s in first["stages"].values()) == 1, first
    row = root.latest("draft", task)
    assert row["prompt_path"] == f"3_generation/draft_prompts/{task}_v1.txt"
    assert "bytes are gone" in row["meta_small"]["unavailable"]["prompt"]
    assert not (root.docs / "draft" / row["doc_id"] / "prompt.txt").exists()
    again = root.scan()
    assert sum(s["docs_created"] + s["docs_updated"] for s in again["stages"].values()) == 0
    root.verify()

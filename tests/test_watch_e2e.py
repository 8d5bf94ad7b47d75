"""``docwatch watch`` end to end: the real process, real signals, a real NOTIFY_SOCKET.

The simulated pipeline (examples/legacy_tree.py: 10 concurrent writers, .tmp+rename for prompts
and parsed files, slow in-place raw writes, re-materialisations, parse failures, evaluations
without raw, copy-mode essays) writes while the daemon runs; afterwards the index must equal a
``docwatch scan`` of a copy of the finished tree on an empty index.

The convergence tests (and tests/test_watch_crash.py) run on both index backends: a test that
asks for the ``index_url`` fixture gets a daemon writing that PostgreSQL database (``sqlite``:
the SQLite file); the reference scan always writes a fresh SQLite index (SPEC "Index backends":
the same documents, ids, links and statuses whichever engine holds them).
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import assert_tombstones, docs_tree, query, staged_batches
from docwatch.config import load_config
from docwatch.ingest.scan import scan
from docwatch.store.locks import writer_lock
from support import NotifySocket, kill_if_running, wait_until

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
import legacy_tree  # noqa: E402

# No periodic reconcile during a test: file events alone must carry the daemon to a scan's
# result (a reconcile would hide a watcher that lost events).
CONFIG = """\
settle_seconds = 0.5
pair_window = 2
reconcile_interval = "1h"
log_level = "INFO"
"""
#: Every column but run_id (who ingested); doc_dir by its stage/doc_id tail (the two indexes'
#: docs roots differ); meta_small as stored (sorted keys).
COMPARED = (
    "doc_id, logical_key_id, stage, task_id, parent_doc_id, template_id, model_id, prompt_path, "
    "parser, status, usage_prompt_tokens, usage_completion_tokens, usage_max_tokens, created_at, "
    "raw_chars, parsed_chars, meta_small, lineage_prev_doc_id, doc_dir"
)


@pytest.fixture
def notify():
    n = NotifySocket()
    yield n
    n.close()


class Env:
    """One data root, the daemon's index outside it (an SQLite file, or the PostgreSQL
    database ``index_url``), and a config file."""

    def __init__(self, tmp_path: Path, index_url: str | None = None) -> None:
        self.tmp = tmp_path
        self.data = tmp_path / "data"
        self.data.mkdir()
        self.db = tmp_path / "watch-index" / "documents.sqlite"
        self.docs = tmp_path / "watch-index" / "docs"
        self.index_url = index_url
        self.config = tmp_path / "docwatch.toml"
        self.config.write_text(CONFIG)
        self.procs: list[subprocess.Popen] = []
        self.history: list[Path] = []  # earlier states of the tree the daemon indexed

    def remember(self) -> None:
        """Keep a copy of the tree as it is now (its task tables), for the scan reference."""
        keep = self.tmp / f"history-{len(self.history)}"
        shutil.copytree(self.data, keep, symlinks=True)
        self.history.append(keep)

    @property
    def index(self) -> str | Path:
        """The daemon's index, for ``rows``, conftest.query and assert_tombstones."""
        return self.index_url or self.db

    def args(self, data: Path, db: Path, docs: Path, index_url: str | None = None) -> list[str]:
        where = ["--index-url", index_url] if index_url else ["--db", str(db)]
        return [
            "--config",
            str(self.config),
            "--data-root",
            str(data),
            *where,
            "--docs-root",
            str(docs),
        ]

    def own_args(self) -> list[str]:
        """The arguments naming the daemon's own data root and index."""
        return self.args(self.data, self.db, self.docs, self.index_url)

    def start(
        self,
        notify: NotifySocket | None,
        *,
        name: str = "watch",
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCWATCH_", "NOTIFY"))}
        env |= extra_env or {}
        if notify is not None:
            env |= {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"}
        log = open(self.tmp / f"{name}-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "docwatch", "watch", *self.own_args()],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        proc.log_path = log.name
        log.close()
        self.procs.append(proc)
        return proc

    def log(self, proc: subprocess.Popen) -> str:
        return Path(proc.log_path).read_text(errors="replace")

    def cleanup(self) -> None:
        for p in self.procs:
            kill_if_running(p)

    def cfg(self):
        flags = {"data_root": self.data, "db": self.db, "docs_root": self.docs}
        return load_config(self.config, {}, flags | {"index_url": self.index_url})

    def has_index(self) -> bool:
        """Whether the daemon has made its index yet."""
        if self.index_url is None:
            return self.db.exists()
        import psycopg

        with psycopg.connect(self.index_url, autocommit=True) as con:
            return con.execute("SELECT to_regclass('docwatch_schema') IS NOT NULL").fetchone()[0]

    def caught_up(self) -> bool:
        """Every settled pipeline file is in the daemon's ledger, and nothing is pending."""
        if not self.has_index():
            return False
        result = scan(self.cfg(), run_id="probe", dry_run=True)
        busy = sum(c["new"] + c["deferred"] for c in result.counts.values())
        return busy == 0 and not rows(self.index, "WHERE status = 'pending'")


@pytest.fixture
def env(tmp_path, request):
    """SQLite, unless the test asks for ``index_url`` too (then: run on both backends)."""
    index_url = (
        request.getfixturevalue("index_url") if "index_url" in request.fixturenames else None
    )
    e = Env(tmp_path, index_url)
    yield e
    e.cleanup()


def rows(index: Path | str, where: str = "WHERE status <> 'superseded'") -> set[tuple]:
    """The visible documents, every column compared (superseded ones: ``assert_tombstones``),
    of an SQLite file or a postgresql:// URL."""
    found = query(index, f"SELECT {COMPARED} FROM documents {where}")
    return {(*r[:-1], "/".join(r[-1].split("/")[-2:])) for r in found}


def stop(env: Env, proc: subprocess.Popen, notify: NotifySocket | None) -> None:
    """SIGTERM: exit 0 within a few seconds, STOPPING=1 sent."""
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(10)
    except subprocess.TimeoutExpired:
        pytest.fail("docwatch watch did not exit within 10s of SIGTERM:\n" + env.log(proc))
    assert rc == 0, env.log(proc)
    if notify is not None:
        wait_until(lambda: notify.count("STOPPING=1") >= 1, 5, what="STOPPING=1")


def scan_of_copy(env: Env) -> set[tuple]:
    """``docwatch scan`` of a copy of the finished tree (mtimes kept) on an empty index, after
    a scan of each earlier state the daemon saw (``env.history``: the task tables are rewritten
    per experiment, and a task keeps the facts it was indexed with).  Returns the rows; the
    files of both indexes are compared too."""
    if env.index_url is not None:
        assert not env.cfg().db.exists(), "the daemon on PostgreSQL made an SQLite index"
    copy = env.tmp / "copy"
    db, docs = env.tmp / "scan-index" / "documents.sqlite", env.tmp / "scan-index" / "docs"
    # The copy is finished: every file is read however young.  With the daemon's
    # settle_seconds the scan would defer files written less than 0.5 s before it ran (the
    # daemon read them at their close), and hold the parsed files of their tasks with them.
    finished = {**os.environ, "DOCWATCH_SETTLE_SECONDS": "0"}
    for state in [*env.history, env.data]:
        shutil.copytree(state, copy, symlinks=True, dirs_exist_ok=True)  # copy2: mtimes kept
        out = subprocess.run(
            [sys.executable, "-m", "docwatch", "scan", *env.args(copy, db, docs), "--json"],
            cwd=REPO,
            env=finished,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
    assert docs_tree(env.docs) == docs_tree(docs), "document files differ from the scan's"
    assert_tombstones(env.index, env.docs)
    return rows(db)


def assert_same(watched: set[tuple], scanned: set[tuple]) -> None:
    only_watch, only_scan = sorted(watched - scanned), sorted(scanned - watched)
    assert not only_watch and not only_scan, (
        f"{len(only_watch)} rows only in watch, {len(only_scan)} only in scan:\n"
        + "\n".join(f"  watch: {r}" for r in only_watch[:10])
        + "\n"
        + "\n".join(f"  scan:  {r}" for r in only_scan[:10])
    )


def assert_verified_and_same_as_scan(env: Env) -> None:
    """`docwatch verify` is clean and the index equals a scan of the finished tree."""
    verify = subprocess.run(
        [sys.executable, "-m", "docwatch", "verify", *env.own_args()],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert_same(rows(env.index), scan_of_copy(env))


def wait_ready(env: Env, proc: subprocess.Popen, notify: NotifySocket, n: int = 1) -> None:
    wait_until(lambda: notify.count("READY=1") >= n or proc.poll() is not None, 60, what="READY")
    assert proc.poll() is None, env.log(proc)


def test_live_pipeline_converges_with_a_scan_of_the_finished_tree(env, notify, index_url):
    pre = legacy_tree.build_tree(env.data, combos=1, seed=11, quirks=False)  # an older tree
    env.remember()  # its task tables are rewritten by the next experiment
    proc = env.start(notify)
    wait_ready(env, proc, notify)
    assert env.caught_up(), "READY=1 came before the catch-up finished"
    assert len(rows(env.index)) == sum(pre.attempts.values())

    summary = legacy_tree.run_pipeline(
        env.data, combos=6, seed=12, writers=10, raw_write_delay=0.05
    )
    assert summary.complete
    wait_until(env.caught_up, 60, interval=0.3, what="the daemon to index everything")
    assert proc.poll() is None
    stop(env, proc, notify)

    assert notify.count("WATCHDOG=1") >= 1
    assert any(m.startswith(("STATUS=", "READY=1\nSTATUS=")) for m in notify.messages)
    assert_verified_and_same_as_scan(env)


def test_stage_folders_made_while_watched_converge_with_a_scan(env, notify):
    """An empty data root: every stage folder is made by the pipeline while the daemon runs,
    so files land in folders watched early (on watchdog's thread) and in the instant before
    (found by listing).  Each source is in exactly one document, and live = scan."""
    proc = env.start(notify)
    wait_ready(env, proc, notify)
    summary = legacy_tree.run_pipeline(
        env.data, combos=4, seed=14, writers=10, raw_write_delay=0.02
    )
    assert summary.complete
    wait_until(env.caught_up, 60, interval=0.3, what="the daemon to index everything")
    stop(env, proc, notify)
    assert_verified_and_same_as_scan(env)


def test_kill_9_in_the_middle_then_restart_converges(env, notify, index_url):
    proc = env.start(notify)
    wait_ready(env, proc, notify)
    done = threading.Event()
    errors: list[BaseException] = []

    def pipeline():
        try:
            legacy_tree.run_pipeline(env.data, combos=6, seed=13, writers=10, raw_write_delay=0.15)
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    writer = threading.Thread(target=pipeline, daemon=True)
    writer.start()
    wait_until(lambda: len(rows(env.index)) >= 20, 60, interval=0.02, what="some documents")
    print("pipeline still writing at kill time:", writer.is_alive())
    proc.kill()  # SIGKILL, wherever it is (mid-batch or not)
    assert proc.wait(10) == -signal.SIGKILL

    proc = env.start(notify)
    wait_ready(env, proc, notify, n=2)
    writer.join(120)
    assert done.is_set() and not errors, errors
    wait_until(env.caught_up, 60, interval=0.3, what="the daemon to index everything")
    stop(env, proc, notify)

    assert_verified_and_same_as_scan(env)


def test_a_second_watch_on_the_same_index_exits_4_naming_the_holder(env, notify):
    first = env.start(notify)
    wait_ready(env, first, notify)
    second = env.start(None, name="second")
    assert second.wait(30) == 4
    assert f"pid {first.pid}" in env.log(second)
    assert first.poll() is None
    stop(env, first, notify)


def _has_open(pid: int, path: Path) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir():
        try:
            if os.readlink(fd) == str(path):
                return True
        except OSError:
            continue
    return False


def test_signal_while_waiting_for_the_writer_lock_exits_0_and_loses_nothing(env, notify):
    """Nothing is written before the writer lock is held: a stop may give up the wait."""
    folder = env.data / "4_evaluation" / "evaluation_responses"
    folder.mkdir(parents=True)
    proc = env.start(notify)
    wait_ready(env, proc, notify)
    lock = writer_lock(env.db)
    lock.acquire()  # another writer (a scan) holds the index for a long batch
    try:
        (folder / "t__a__b_v1.txt").write_bytes(b"stuck\n")
        wait_until(lambda: _has_open(proc.pid, lock.path), 30, what="daemon waiting for the lock")
        stop(env, proc, notify)
    finally:
        lock.release()
    proc = env.start(notify)  # the restart's catch-up indexes what was left
    wait_ready(env, proc, notify, n=2)
    wait_until(lambda: len(rows(env.db)) == 1, 30, what="the file indexed after restart")
    stop(env, proc, notify)


def _staged(env: Env) -> bool:
    return any(any(b.iterdir()) for b in staged_batches(env.docs))


def _hold_index(env: Env) -> sqlite3.Connection:
    con = sqlite3.connect(env.db, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")  # the batch in hand blocks at its first commit
    return con


@pytest.mark.parametrize("second_signal", [False, True])
def test_first_signal_finishes_the_batch_in_hand_a_second_exits_at_once(env, notify, second_signal):
    folder = env.data / "4_evaluation" / "evaluation_responses"
    folder.mkdir(parents=True)
    proc = env.start(notify)
    wait_ready(env, proc, notify)
    holder = _hold_index(env)
    try:
        (folder / "t__a__b_v1.txt").write_bytes(b"in hand\n")
        wait_until(lambda: _staged(env), 30, what="the batch staged, blocked on the index")
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None, "the first signal must let the batch in hand finish"
        if second_signal:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(5) == 128 + signal.SIGTERM
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    if not second_signal:
        assert proc.wait(15) == 0, env.log(proc)
        assert len(rows(env.db)) == 1, "the batch in hand was committed before exiting"
        return
    proc = env.start(notify)  # nothing half-done is left behind: the restart indexes it
    wait_ready(env, proc, notify, n=2)
    wait_until(lambda: len(rows(env.db)) == 1, 30, what="the file indexed after restart")
    stop(env, proc, notify)
    assert not _staged(env)


def _burst(env: Env, n: int, writers: int = 4) -> None:
    """n documents as fast as possible: half parsed files (.tmp + rename), half raw files
    written in place, every one its own task, from ``writers`` threads."""
    parsed = env.data / "3_generation" / "draft_responses"
    raw = env.data / "3_generation" / "essay_responses_raw"

    parsed.mkdir(parents=True, exist_ok=True)
    raw.mkdir(parents=True, exist_ok=True)

    def write(k: int) -> None:
        for i in range(k, n, writers):
            name = f"burst{i:06d}__tpl__model_v1.txt"
            if i % 2:  # the IO manager: .tmp, then os.replace
                (parsed / (name + ".tmp")).write_bytes(b"parsed %d\n" % i)
                os.replace(parsed / (name + ".tmp"), parsed / name)
            else:  # the raw side write: in place
                (raw / name).write_bytes(b"raw %d\n" % i)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _burst_test(env: Env, notify: NotifySocket, n: int, timeout: float) -> None:
    proc = env.start(notify)
    wait_ready(env, proc, notify)
    _burst(env, n)
    wait_until(
        lambda: len(rows(env.db)) >= n or proc.poll() is not None,
        timeout,
        interval=0.5,
        what=f"{n} documents",
    )
    wait_until(env.caught_up, 60, interval=0.5, what="nothing left to index")
    stop(env, proc, notify)
    assert len(rows(env.db)) == n  # none lost, none twice
    con = sqlite3.connect(f"file:{env.db}?mode=ro", uri=True)
    assert con.execute("SELECT count(*) FROM sources").fetchone()[0] == n
    con.close()


def test_a_burst_of_2000_files_loses_none(env, notify):
    _burst_test(env, notify, 2000, 120)


@pytest.mark.long
def test_a_burst_of_20000_files_loses_none(env, notify):
    _burst_test(env, notify, 20_000, 600)

"""What the process really does to the files, seen by ``strace`` (issue 12).

* Read-only on sources (SPEC "Guarantees"): ``docwatch scan``, ``scan --link`` and a running
  ``docwatch watch`` (while the simulated pipeline writes) are traced with ``strace -f -y``;
  nothing inside the legacy folders (``1_raw``, ``2_tasks``, ``3_generation``,
  ``4_evaluation``) is opened for writing, locked, renamed, unlinked, truncated, re-timed,
  chmod'ed, chown'ed, linked to or created, and every file there is opened
  ``O_NOATIME|O_NOFOLLOW``.  The index and the documents stay at their defaults (under the data
  root, outside the legacy folders), so the checks look at paths, not at "anything under
  data/".
  The task tables and templates (``2_tasks``, ``1_raw``) are checked apart from the pipeline's
  output folders, so that one finding does not hide the other.  A scan and a rescan run again
  with runs of 3 names, so that every folder is sorted the way a folder of more than 8,192
  files is: in runs spilled to temporary files (which must be anonymous and outside the data
  root).
* atime: on a ``relatime`` mount a plain read of a file whose atime is older than its mtime
  updates the atime; a scan must not (O_NOATIME honoured).
* Durable before visible, by syscalls (``strace`` plus ``DOCWATCH_TRACE`` markers, which show
  up in the syscall stream as writes to the trace file): staged files synced before the intents
  commit, or, for an index on the documents' filesystem, the intents written to the ``-wal``
  unflushed just before the batch's syncfs (never for an index on another filesystem: tmpfs
  here); documents renamed into place only after it and synced before the rows commit;
  replacements of visible files only after the rows commit, and synced before the intents
  are cleared.
* The suite's configuration turns an exception in a test's thread into a failure.

``strace`` missing or ptrace refused is a failure with the reason, never a skip
(``make system-deps`` / ``.ci/install-system-deps`` install strace).
"""

from __future__ import annotations

import codecs
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import legacy_tree
import pytest
from stracelog import (
    CHANGED,
    LOCK_CMD,
    ORDER_TRACE,
    READ_ONLY_TRACE,
    WRITE_FLAGS,
    Call,
    changed_paths,
    legacy_rel,
    open_flags,
    open_path,
    parse_strace,
    require_strace,
    strace_argv,
    string_arg,
)
from support import NotifySocket, wait_until

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
PIPELINE_TOP = ("3_generation", "4_evaluation")
TABLE_TOP = ("1_raw", "2_tasks")


CONFIG = """\
settle_seconds = 0.5
pair_window = 2
reconcile_interval = "1h"
log_level = "INFO"
"""


# --- the traced runs --------------------------------------------------------------------------


@dataclass
class Traced:
    """One traced docwatch run: its data root, cwd and syscalls."""

    label: str
    data_root: Path
    cwd: Path
    calls: list[Call]
    strace_file: Path
    log: str = ""
    index: Path | None = None  # ``--db``, when not the default

    @property
    def db(self) -> Path:
        return self.index or self.data_root / "db" / "documents.sqlite"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCWATCH_", "NOTIFY"))}
    env.pop("WATCHDOG_USEC", None)
    return env | extra


#: ``docwatch`` with sorted runs of 3 names, so that a small tree's folders are sorted by
#: spilling runs to temporary files and merging them (``ingest/sortedruns.py``): the path a
#: tree of more than ``RUN_NAMES`` (8,192) files a folder takes.
SPILLING_DOCWATCH = (
    PYTHON,
    "-c",
    "import docwatch.ingest.sortedruns as s; s.RUN_NAMES = 3\n"
    "from docwatch.cli import main; main()",
)


def traced_scan(
    tmp: Path,
    data_root: Path,
    syscalls: list[str],
    *,
    label: str,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    docwatch: tuple[str, ...] = (PYTHON, "-m", "docwatch"),
    db: Path | None = None,
) -> Traced:
    out = tmp / f"strace-{label}.txt"
    argv = strace_argv(out, syscalls) + [*docwatch, "scan", "--json"]
    argv += ["--data-root", str(data_root), *extra, *(["--db", str(db)] if db else [])]
    proc = subprocess.run(
        argv, cwd=tmp, env=env or clean_env(), capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, f"traced scan failed (rc {proc.returncode}):\n{proc.stderr}"
    log = proc.stdout + proc.stderr
    return Traced(label, data_root, tmp, parse_strace(out), out, log, db)


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry))
    return kids


def traced_watch(tmp: Path) -> Traced:
    """``docwatch watch`` under strace while the simulated pipeline writes live; SIGTERM to the
    daemon (strace's child) once it has indexed everything."""
    data_root = tmp / "data"
    data_root.mkdir()
    config = tmp / "docwatch.toml"
    config.write_text(CONFIG)
    out, log = tmp / "strace-watch.txt", tmp / "watch.log"
    notify = NotifySocket()
    argv = strace_argv(out, READ_ONLY_TRACE) + [PYTHON, "-m", "docwatch", "watch"]
    argv += ["--config", str(config), "--data-root", str(data_root)]
    with open(log, "wb") as log_fh:
        strace = subprocess.Popen(
            argv, cwd=tmp, env=clean_env(NOTIFY_SOCKET=notify.path), stdout=log_fh, stderr=log_fh
        )
    try:
        wait_until(lambda: notify.seen("READY=1") or strace.poll() is not None, 90, what="READY=1")
        assert strace.poll() is None, log.read_text(errors="replace")
        daemon = wait_until(lambda: children_of(strace.pid), 10, what="the traced daemon")[0]
        legacy_tree.run_pipeline(data_root, combos=1, seed=3, writers=4, raw_write_delay=0.01)
        wait_until(lambda: _caught_up(config, data_root), 90, interval=0.5, what="catch-up")
        os.kill(daemon, signal.SIGTERM)
        try:
            rc = strace.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail("docwatch watch did not exit after SIGTERM:\n" + log.read_text())
        assert rc == 0, f"docwatch watch exited {rc}:\n{log.read_text(errors='replace')}"
    finally:
        if strace.poll() is None:  # the daemon first: a killed strace leaves its tracee running
            for pid in children_of(strace.pid):
                os.kill(pid, signal.SIGKILL)
            strace.kill()
            strace.wait(10)
        notify.close()
    return Traced("watch", data_root, tmp, parse_strace(out), out, log.read_text(errors="replace"))


def _caught_up(config: Path, data_root: Path) -> bool:
    from docwatch.config import load_config
    from docwatch.ingest.scan import scan

    db = data_root / "db" / "documents.sqlite"
    if not db.exists():
        return False
    cfg = load_config(config, {}, {"data_root": data_root})
    result = scan(cfg, run_id="probe", dry_run=True)
    busy = sum(c["new"] + c["deferred"] for c in result.counts.values())
    return busy == 0 and not query(db, "SELECT 1 FROM documents WHERE status = 'pending'")


def query(db: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Traced]:
    """The three traced runs the read-only tests look at (made once for the module)."""
    require_strace()
    found: dict[str, Traced] = {}
    for label, extra in (("scan", ()), ("scan-link", ("--link",))):
        tmp = tmp_path_factory.mktemp(label)
        data = tmp / "data"
        legacy_tree.build_tree(data, combos=1, seed=7)
        found[label] = traced_scan(tmp, data, READ_ONLY_TRACE, label=label, extra=extra)
    # A re-scan takes its own path: the ledger's stats through a folder descriptor, the task
    # tables hashed and not parsed, the documents' ids against the docs folders.
    scanned = found["scan"]
    found["rescan"] = traced_scan(scanned.cwd, scanned.data_root, READ_ONLY_TRACE, label="rescan")
    # The same two with every folder's names sorted in spilled runs (temporary files).
    tmp = tmp_path_factory.mktemp("scan-spill")
    legacy_tree.build_tree(tmp / "data", combos=1, seed=7)
    for label in ("scan-spill", "rescan-spill"):
        found[label] = traced_scan(
            tmp, tmp / "data", READ_ONLY_TRACE, label=label, docwatch=SPILLING_DOCWATCH
        )
    found["watch"] = traced_watch(tmp_path_factory.mktemp("watch"))
    return found


RUNS = ["scan", "scan-link", "rescan", "scan-spill", "rescan-spill", "watch"]


def _report(problems: list[str], what: str, run: Traced) -> str:
    shown = "\n  ".join(problems[:15])
    return f"{run.label}: {len(problems)} {what} (strace: {run.strace_file}):\n  {shown}"


def _opened_files(run: Traced, tops) -> list[tuple[str, set[str], Call]]:
    """(relpath, flags, call) of every open of a non-directory inside ``tops``."""
    out = []
    for c in run.calls:
        path = open_path(c, run.cwd)
        rel = legacy_rel(path, run.data_root, tops)
        if rel is None:
            continue
        flags = open_flags(c)
        if "O_DIRECTORY" in flags or os.path.isdir(path):
            continue
        out.append((rel, flags, c))
    return out


def _ledger(run: Traced) -> set[str]:
    return {r[0] for r in query(run.db, "SELECT relpath FROM sources")}


# --- 1. read-only on sources ------------------------------------------------------------------


@pytest.mark.parametrize("label", RUNS)
def test_nothing_in_the_legacy_folders_is_written_locked_or_changed(runs, label):
    run = runs[label]
    problems = []
    for c in run.calls:
        path = open_path(c, run.cwd)
        if legacy_rel(path, run.data_root) and open_flags(c) & WRITE_FLAGS:
            problems.append(f"opened for writing: {c.text[:300]}")
        if c.name in ("flock", "fcntl") and legacy_rel(c.fd_path(0), run.data_root):
            cmd = c.args[1] if len(c.args) > 1 else ""
            if c.name == "flock" or LOCK_CMD.match(cmd):
                problems.append(f"locked: {c.text[:300]}")
        if c.name in CHANGED:  # even an attempt that failed (mkdir -p of a legacy folder…)
            touched = [p for p in changed_paths(c, run.cwd) if legacy_rel(p, run.data_root)]
            if touched:
                problems.append(f"changed {touched}: {c.text[:300]}")
    assert not problems, _report(problems, "changes to the legacy folders", run)
    ledger = _ledger(run)
    assert len(ledger) > 40, ledger
    if label.startswith("rescan"):  # not vacuous: it listed every source and found each one known
        report, _ = json.JSONDecoder().raw_decode(run.log)
        stages = report["stages"].values()
        assert sum(c["indexed"] for c in stages) == len(ledger), report
        assert sum(c["docs_created"] + c["docs_updated"] for c in stages) == 0, report
        return
    # Not vacuous: the trace saw the process read every source it indexed, and (with --link)
    # link them into its own folders.
    opened = {rel for rel, _, c in _opened_files(run, PIPELINE_TOP) if c.ret.split()[0] != "-1"}
    assert ledger <= opened, f"sources indexed but never seen opened: {sorted(ledger - opened)[:5]}"
    if label == "scan-link":
        links = [c for c in run.calls if c.name in ("link", "linkat") and c.ret == "0"]
        assert len(links) >= len(ledger) // 2, "--link made no hard links"


@pytest.mark.parametrize("label", ["scan", "scan-link", "scan-spill", "watch"])  # a rescan: none
def test_pipeline_files_are_opened_noatime_and_nofollow(runs, label):
    run = runs[label]
    opens = _opened_files(run, PIPELINE_TOP)
    assert opens, f"{run.label}: no pipeline file was opened (strace: {run.strace_file})"
    problems = [
        f"{rel}: {sorted(flags)} lacks {sorted({'O_NOATIME', 'O_NOFOLLOW'} - flags)}"
        for rel, flags, _ in opens
        if not {"O_NOATIME", "O_NOFOLLOW"} <= flags
    ]
    assert not problems, _report(problems, "opens without O_NOATIME|O_NOFOLLOW", run)


@pytest.mark.parametrize("label", ["scan-spill", "rescan-spill"])
def test_spilled_runs_are_anonymous_files_outside_the_data_root(runs, label):
    """Not vacuous: the spilling runs did sort in spilled runs (``tempfile.TemporaryFile``,
    an ``O_TMPFILE`` open: the one the product makes), and none of those files is in the data
    root, let alone in a watched folder."""
    run = runs[label]
    spills = [
        (open_path(c, run.cwd), c)
        for c in run.calls
        if "O_TMPFILE" in open_flags(c) and c.ret.split()[0] != "-1"
    ]
    assert spills, f"{label}: no run was spilled (no O_TMPFILE open in {run.strace_file})"
    inside = [c.text[:300] for p, c in spills if p and Path(p).is_relative_to(run.data_root)]
    assert not inside, _report(inside, "spilled runs in the data root", run)


@pytest.mark.parametrize("label", ["scan", "rescan", "scan-spill", "watch"])
def test_task_tables_and_templates_are_opened_noatime_and_nofollow(runs, label):
    """``2_tasks/*.csv`` and ``1_raw/*.csv`` are in the legacy folders too: reading them must
    not move their atime (nor follow a symlink planted there)."""
    run = runs[label]
    opens = _opened_files(run, TABLE_TOP)
    assert {rel.split(os.sep)[0] for rel, _, _ in opens} == set(TABLE_TOP), opens
    problems = [
        f"{rel}: {sorted(flags)} lacks {sorted({'O_NOATIME', 'O_NOFOLLOW'} - flags)}"
        for rel, flags, _ in opens
        if not {"O_NOATIME", "O_NOFOLLOW"} <= flags
    ]
    assert not problems, _report(problems, "opens without O_NOATIME|O_NOFOLLOW", run)


# --- 2. atime ---------------------------------------------------------------------------------


def mount_options(path: Path) -> tuple[str, set[str]]:
    """(mount point, per-mount options) of the filesystem holding ``path``."""
    best, opts = "", set()
    real = os.path.realpath(path)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = codecs.decode(fields[4], "unicode_escape")
        if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, opts = point, set(fields[5].split(","))
    return best, opts


def _age_atimes(files: list[Path]) -> dict[Path, int]:
    """atime an hour older than mtime: relatime then updates atime on a normal read."""
    out = {}
    for f in files:
        st = os.stat(f)
        os.utime(f, ns=(st.st_mtime_ns - 3600 * 10**9, st.st_mtime_ns))
        out[f] = os.stat(f).st_atime_ns
    return out


@pytest.fixture
def atime_tree(tmp_path) -> Path:
    point, opts = mount_options(tmp_path)
    if "noatime" in opts:
        pytest.fail(
            f"{tmp_path} is on {point}, mounted noatime: a read never moves atime there, so the "
            "O_NOATIME check would prove nothing; run the tests on a relatime/strictatime mount"
        )
    data = tmp_path / "data"
    legacy_tree.build_tree(data, combos=1, seed=9)
    control = tmp_path / "control.txt"  # outside the legacy folders
    raws = data / "3_generation" / "draft_responses_raw"
    shutil.copy(next(p for p in sorted(raws.iterdir()) if p.is_file()), control)
    before = _age_atimes([control])
    control.read_bytes()  # a plain read: relatime must update this atime, or the test is moot
    assert os.stat(control).st_atime_ns != before[control], (
        f"a plain read did not move the atime on {point} ({sorted(opts)}): cannot check O_NOATIME"
    )
    return data


def _scan_and_compare_atimes(data: Path, tops) -> None:
    files = sorted(p for top in tops for p in (data / top).rglob("*") if p.is_file() and p.suffix)
    assert len(files) > 5, files
    before = _age_atimes(files)
    out = subprocess.run(
        [PYTHON, "-m", "docwatch", "scan", "--json", "--data-root", str(data)],
        cwd=data.parent,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    counts = json.loads(out.stdout)["stages"]
    assert sum(c["new"] for c in counts.values()) > 5, out.stdout  # it did read the files
    moved = [str(f.relative_to(data)) for f in files if os.stat(f).st_atime_ns != before[f]]
    assert not moved, f"the scan moved the atime of {len(moved)} of {len(files)}: {moved[:10]}"


def test_a_scan_leaves_the_atime_of_pipeline_files_alone(atime_tree):
    _scan_and_compare_atimes(atime_tree, PIPELINE_TOP)


def test_a_scan_leaves_the_atime_of_task_tables_and_templates_alone(atime_tree):
    _scan_and_compare_atimes(atime_tree, TABLE_TOP)


# --- 3. the durable order, by syscalls --------------------------------------------------------

S = 10**9
DAY = 86400 * S
T0 = time.time_ns() - 2 * DAY
TASKS = [f"combo_v1_{k:012x}__creative-synthesis-v2__sonnet-4" for k in range(4)]


def _write(data: Path, rel: str, text: str, t_ns: int) -> None:
    path = data / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, ns=(t_ns, t_ns))


def first_state(data: Path) -> None:
    """Raw drafts with their prompt v1; the parsed files and a prompt v2 not yet written."""
    shutil.copytree(REPO / "examples" / "1_raw", data / "1_raw")
    for k, task in enumerate(TASKS):
        t = T0 + k * 100 * S
        _write(data, f"3_generation/draft_prompts/{task}_v1.txt", f"prompt one {k}\n", t)
        raw = f"<essay>\nthe draft {k}\n</essay>\n"
        _write(data, f"3_generation/draft_responses_raw/{task}_v1.txt", raw, t + 10 * S)


def second_state(data: Path) -> None:
    """The parsed files arrive (pairing: a visible document gains parsed.txt and a new
    metadata.json), and a prompt v2 older than the raw (its prompt.txt is replaced); new
    evaluations of the drafts (new directories in the same batches)."""
    for k, task in enumerate(TASKS):
        t = T0 + k * 100 * S
        _write(data, f"3_generation/draft_responses/{task}_v1.txt", f"the draft {k}\n", t + 11 * S)
        _write(data, f"3_generation/draft_prompts/{task}_v2.txt", f"prompt two {k}\n", t + 5 * S)
        rel = f"4_evaluation/evaluation_responses/{task}__novelty__sonnet-4_v1.txt"
        _write(data, rel, f"score {k}\nSCORE: 7\n", t + 50 * S)


@dataclass
class Event:
    """A step of the write path, as syscalls show it."""

    kind: str  # staged | sync | fsync | wal | commit | rename | unlink | marker
    start: int
    end: int
    paths: tuple[str, ...] = ()
    marker: str = ""
    calls: list[Call] = field(default_factory=list)


def durable_events(run: Traced, trace_file: Path) -> list[Event]:
    """The syscalls that matter for durability, in order; consecutive syncs of the SQLite
    files form one ``commit``; a write to the ``-wal`` file is a ``wal`` event."""
    docs, db = run.data_root / "docs", run.db
    staging = str(docs / ".tmp") + os.sep
    db_files = {str(db), f"{db}-wal", f"{db}-journal", str(db.parent)}
    events: list[Event] = []
    for c in run.calls:
        if c.ret.split()[0] == "-1":
            continue
        target = c.fd_path(0)
        if c.name in ("write", "pwrite64"):
            if target == str(trace_file):
                marker = string_arg(c.args[1]).split()[1]
                events.append(Event("marker", c.start, c.end, marker=marker))
            elif target and target.startswith(staging):
                events.append(Event("staged", c.start, c.end, (target,)))
            elif target == f"{db}-wal":
                events.append(Event("wal", c.start, c.end, (target,)))
        elif c.name == "openat" and "O_CREAT" in open_flags(c):
            path = c.ret_path()
            if path and path.startswith(staging):
                events.append(Event("staged", c.start, c.end, (path,)))
        elif c.name in ("link", "linkat"):
            new = changed_paths(c, run.cwd)[0]
            if new.startswith(staging):
                events.append(Event("staged", c.start, c.end, (new,)))
        elif c.name == "syncfs":
            events.append(Event("sync", c.start, c.end, (target or "",)))
        elif c.name in ("fsync", "fdatasync"):
            if target in db_files:
                if events and events[-1].kind == "commit":
                    events[-1].end = c.end
                    events[-1].calls.append(c)
                else:
                    events.append(Event("commit", c.start, c.end, (target,), calls=[c]))
            else:
                events.append(Event("fsync", c.start, c.end, (target or "",)))
        elif c.name.startswith("rename"):
            old, new = changed_paths(c, run.cwd)
            if new.startswith(str(docs) + os.sep) and not new.startswith(staging):
                events.append(Event("rename", c.start, c.end, (old, new)))
        elif c.name in ("unlink", "unlinkat"):
            (path,) = changed_paths(c, run.cwd)
            if path.startswith(str(docs) + os.sep) and not path.startswith(staging):
                events.append(Event("unlink", c.start, c.end, (path,)))
    return events


def _synced(events: list[Event], after: int, before: int, files: set[str]) -> bool:
    """A syncfs, or an fsync of every one of ``files``, strictly between two line numbers."""
    between = [e for e in events if e.start > after and e.end < before]
    if any(e.kind == "sync" for e in between):
        return True
    fsynced = {e.paths[0] for e in between if e.kind == "fsync"}
    return bool(files) and files <= fsynced


def check_batches(run: Traced, trace_file: Path, existing: set[str]) -> dict[str, int]:
    """Check each batch (``staged`` … ``cleaned`` markers); ``existing``: the document files
    there were before the run (a rename onto one of them is a replacement).

    The intents are durable either by their own commit (a ``-wal`` fsync after a syncfs of
    the staged files), or, where the index is on the staging's filesystem, by the batch's
    syncfs after their ``-wal`` write (one flush for both; ``intents_by_syncfs`` counts
    those batches)."""
    events = durable_events(run, trace_file)
    markers = [e for e in events if e.kind == "marker"]
    cleaned = [e.end for e in markers if e.marker == "cleaned"]
    assert sum(e.marker == "staged" for e in markers) == len(cleaned) > 0, markers
    same_fs = os.stat(run.db.parent).st_dev == os.stat(run.data_root / "docs").st_dev
    totals = {"batches": 0, "created": 0, "added": 0, "replaced": 0, "intents_by_syncfs": 0}
    lower = -1
    for upper in cleaned:
        window = [e for e in events if lower < e.start and e.end <= upper]
        lower = upper
        where = (
            f"{run.label}, batch {totals['batches'] + 1} (lines ≤ {upper + 1} of {run.strace_file})"
        )
        totals["batches"] += 1
        staged = [e for e in window if e.kind == "staged"]
        assert staged, f"{where}: no staged file written"
        last_staged = staged[-1].end
        marked = [e for e in window if e.kind == "marker" and e.marker == "intents_committed"]
        assert marked, f"{where}: no intents_committed marker"
        intents_at = marked[0]
        wal = [e for e in window if e.kind == "wal" and last_staged < e.start < intents_at.start]
        assert wal, f"{where}: no intents written to the -wal file after the files were staged"
        files = {p for e in staged for p in e.paths}
        synced = _synced(window, last_staged, intents_at.start, files)
        assert synced, (
            f"{where}: no syncfs (nor an fsync of each staged file) between the last staged "
            "write and the intents commit"
        )
        flushes = [e for e in window if wal[-1].end < e.start and e.end < intents_at.start]
        if not any(e.kind == "commit" for e in flushes):  # no -wal fsync: left to the syncfs
            assert any(e.kind == "sync" for e in flushes), (
                f"{where}: the intents written to the -wal file were never flushed before the "
                "renames (no fsync, no syncfs)"
            )
            assert same_fs, (
                f"{where}: the intents' commit was left to a syncfs of the documents' "
                f"filesystem, but the index {run.db} is on another one: not durable"
            )
            totals["intents_by_syncfs"] += 1
        renames = [e for e in window if e.kind == "rename"]
        early = [e.paths[1] for e in renames if e.start < intents_at.end]
        assert not early, f"{where}: renamed into docs/ before the intents commit: {early[:3]}"
        commits = [e for e in window if e.kind == "commit" and e.start > intents_at.end]
        assert commits, f"{where}: no rows commit after the intents commit"
        rows = commits[0]
        publish = [e for e in renames if e.paths[1] not in existing]
        replace = [e for e in renames if e.paths[1] in existing]
        late = [e.paths[1] for e in publish if e.end > rows.start]
        assert not late, f"{where}: new directories/files renamed after the rows commit: {late}"
        last_publish = max([e.end for e in publish], default=intents_at.end)
        dirs = {os.path.dirname(e.paths[1]) for e in publish}
        synced = _synced(window, last_publish, rows.start, dirs)
        assert synced, (
            f"{where}: no syncfs (nor fsync of the directories) between the last rename into "
            "place and the rows commit"
        )
        removed = [e for e in window if e.kind == "unlink"]
        visible_changes = replace + removed
        early = [e.paths[-1] for e in visible_changes if e.start < rows.end]
        assert not early, f"{where}: visible files replaced/removed before the rows commit: {early}"
        if visible_changes:
            assert len(commits) >= 2, f"{where}: replacements done, intents never cleared"
            last = max(e.end for e in visible_changes)
            dirs = {os.path.dirname(e.paths[-1]) for e in visible_changes}
            synced = _synced(window, last, commits[1].start, dirs)
            assert synced, (
                f"{where}: no syncfs between the last replacement and the intents clearing"
            )
        docs = str(run.data_root / "docs")
        totals["created"] += sum(
            os.path.dirname(os.path.dirname(e.paths[1])) == docs for e in publish
        )
        totals["added"] += len(publish)
        totals["replaced"] += len(replace)
    return totals


def doc_files(docs: Path) -> set[str]:
    return {
        str(p)
        for stage in docs.iterdir()
        if stage.name != ".tmp"
        for p in stage.glob("*/*")
        if p.is_file()
    }


def test_durable_order_of_a_batch_by_syscalls(tmp_path):
    require_strace()
    data = tmp_path / "data"
    first_state(data)
    trace = tmp_path / "points.trace"
    env = clean_env(DOCWATCH_TRACE=str(trace))
    first = traced_scan(tmp_path, data, ORDER_TRACE, label="first", env=env)
    one = check_batches(first, trace, set())
    assert one["created"] == len(TASKS) and one["replaced"] == 0, one
    # The index beside the documents: each batch's syncfs also makes its intents durable.
    assert one["intents_by_syncfs"] == one["batches"], one

    second_state(data)
    existing = doc_files(data / "docs")
    second = traced_scan(tmp_path, data, ORDER_TRACE, label="second", env=env)
    two = check_batches(second, trace, existing)
    # Not vacuous: the second scan created the evaluations, added parsed.txt to the drafts
    # and replaced their metadata.json and prompt.txt.
    assert two["created"] == len(TASKS), two
    replaced = {
        os.path.basename(e.paths[1])
        for e in durable_events(second, trace)
        if e.kind == "rename" and e.paths[1] in existing
    }
    assert {"metadata.json", "prompt.txt"} <= replaced, (two, replaced)
    rows = query(second.db, "SELECT count(*) FROM documents WHERE stage = 'draft'")
    assert rows == [(len(TASKS),)]
    for task in TASKS:
        (doc_dir,) = query(
            second.db, f"SELECT doc_dir FROM documents WHERE task_id = '{task}' AND status='ok'"
        )[0]
        assert (data / doc_dir / "prompt.txt").read_text().startswith("prompt two")


def test_an_index_on_another_filesystem_flushes_its_own_intents(tmp_path):
    """The documents' syncfs does not flush an index on another filesystem (here tmpfs): each
    batch's intents are committed with their own -wal fsync, after the staged files' syncfs
    and before any rename (``Index.flushed_by_syncfs``)."""
    require_strace()
    shm = Path("/dev/shm")
    assert shm.is_dir() and os.stat(shm).st_dev != os.stat(tmp_path).st_dev, (
        "/dev/shm must be a filesystem of its own (tmpfs) for this test"
    )
    data = tmp_path / "data"
    first_state(data)
    trace = tmp_path / "points.trace"
    env = clean_env(DOCWATCH_TRACE=str(trace))
    index_dir = Path(tempfile.mkdtemp(prefix="docwatch-index-", dir=shm))
    try:
        run = traced_scan(
            tmp_path, data, ORDER_TRACE, label="tmpfs-index", env=env, db=index_dir / "i.sqlite"
        )
        totals = check_batches(run, trace, set())
    finally:
        shutil.rmtree(index_dir, ignore_errors=True)
    assert totals["created"] == len(TASKS), totals
    assert totals["intents_by_syncfs"] == 0, totals


# --- 4. a failure in a test's thread fails the test -------------------------------------------

THREAD_TEST = """\
import threading


def test_a_thread_dies():
    def boom():
        raise RuntimeError("died in a thread")

    t = threading.Thread(target=boom)
    t.start()
    t.join()
"""


def _pytest_session(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    test_file = tmp_path / "test_thread_dies.py"
    test_file.write_text(THREAD_TEST)
    return subprocess.run(
        [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(REPO / "pyproject.toml")]
        + ["--rootdir", str(REPO), *extra, str(test_file)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_exception_in_a_test_thread_fails_the_test(tmp_path):
    """pyproject's pytest options make PytestUnhandledThreadExceptionWarning an error: a test
    whose thread raised fails (pytest alone would only warn)."""
    configured = _pytest_session(tmp_path)
    out = configured.stdout + configured.stderr
    assert configured.returncode == 1 and "1 failed" in out, (
        "a test whose thread raised did not fail under the project's pytest configuration; "
        "pyproject.toml needs filterwarnings = "
        '["error::pytest.PytestUnhandledThreadExceptionWarning"] in [tool.pytest.ini_options]\n'
        + out
    )
    assert "PytestUnhandledThreadExceptionWarning" in out, out
    assert "RuntimeError: died in a thread" in out, out
    # The control: without that option the same test passes (so the failure came from it).
    plain = _pytest_session(tmp_path, "-o", "filterwarnings=")
    assert plain.returncode == 0 and "1 passed" in plain.stdout, plain.stdout + plain.stderr

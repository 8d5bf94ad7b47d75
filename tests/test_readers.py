"""Readers as other users, permission problems, and the exit codes around them (issue 8: 4, 9, 10).

Tests run as root.  "Another user" is the real ``nobody`` (uid/gid 65534, no supplementary
groups) in a forked child that runs the real CLI entry (``docwatch.cli.main``) or the reader API
in-process: /root is 0700, so a dropped child cannot exec the venv python, which is why every
module the child needs is imported (and every command run once as root, for the modules they
import lazily) before forking.  Data lives under a fresh 0755 directory in /tmp (pytest's
tmp_path sits under the 0700 /tmp/pytest-of-root).  Writers run as ``python -m docwatch``
subprocesses with umask 0022 and the default modes, as the shipped unit runs them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import docwatch
import docwatch.cli
import docwatch.dagster.runrecords
import docwatch.ingest.indexer
import docwatch.ingest.scan
import docwatch.reader
import docwatch.status
import docwatch.store.sqlite
import pytest
from conftest import snapshot
from docwatch.errors import IndexCorrupt, IndexUnreadable
from support import NotifySocket, kill_if_running, wait_until

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
import legacy_tree  # noqa: E402

NOBODY = 65534
PY = sys.executable
RAW = "3_generation/draft_responses_raw"


# --- helpers ---------------------------------------------------------------------------------


@dataclass
class Run:
    code: int
    out: bytes
    err: str

    @property
    def text(self) -> str:
        return self.out.decode(errors="replace")

    def __str__(self) -> str:
        return f"exit {self.code}\nstdout: {self.text}\nstderr: {self.err}"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCWATCH_", "NOTIFY_"))}
    return {**env, "DOCWATCH_SETTLE_SECONDS": "0", **extra}


def docwatch_proc(*args, timeout: float = 60) -> Run:
    """``python -m docwatch ...`` as root, umask 0022 (the shipped unit's UMask)."""
    done = subprocess.run(
        [PY, "-m", "docwatch", *map(str, args)],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        timeout=timeout,
        umask=0o022,
    )
    return Run(done.returncode, done.stdout, done.stderr.decode(errors="replace"))


def _invoke(args) -> int:
    """The real CLI entry, in this process; the exit code it would give the shell."""
    try:
        docwatch.cli.main([str(a) for a in args], prog_name="docwatch")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def _warm_up(args) -> int:
    """Run a command in-process as root with its output thrown away and this process's logging
    put back afterwards: only to import whatever it imports lazily before a child drops root."""
    root = logging.getLogger()
    saved = (sys.stdout, sys.stderr, root.handlers[:], root.level)
    watchdog_level = logging.getLogger("watchdog").level
    sys.stdout = io.TextIOWrapper(io.BytesIO())
    sys.stderr = io.TextIOWrapper(io.BytesIO())
    try:
        return _invoke(args)
    finally:
        sys.stdout, sys.stderr, root.handlers[:], level = saved
        root.setLevel(level)
        logging.getLogger("watchdog").setLevel(watchdog_level)


def as_nobody(fn, *args, env: dict[str, str] | None = None) -> Run:
    """Run ``fn(*args)`` in a forked child as uid/gid 65534 with no supplementary groups; its
    return value is the exit code; fds 1 and 2 are captured (dup2 onto files)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 70
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
                sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
                os.environ.update(env or {})
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                os.umask(0o022)
                signal.alarm(120)  # a hung child dies (SIGALRM) instead of hanging the suite
                assert os.geteuid() == NOBODY and os.getegid() == NOBODY and not os.getgroups()
                code = fn(*args)
            except BaseException:
                traceback.print_exc()
                code = 70
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code if isinstance(code, int) else 70)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return Run(
            os.waitstatus_to_exitcode(status), out.read(), err.read().decode(errors="replace")
        )


def cli_as_nobody(*args, env: dict[str, str] | None = None) -> Run:
    return as_nobody(_invoke, list(args), env=env)


def _read_api(db: str, docs: str, stage: str, task: str) -> int:
    """Child side: the reader API; prints what it found (or the error's type and text)."""
    try:
        with docwatch.DocumentsIndex(db, docs) as idx:
            row = idx.get_latest_by_task(stage, task)
            print(json.dumps({"row": row, "parsed": idx.read_text(row, "parsed")}))
    except Exception as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
    return 0


def api_as_nobody(db: Path, docs: Path, stage: str, task: str) -> dict:
    run = as_nobody(_read_api, str(db), str(docs), stage, task)
    assert run.code == 0, run
    return json.loads(run.out)


def reader_files(db: Path) -> list[Path]:
    return [Path(f"{db}{s}") for s in ("-wal", "-shm")]


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def root_only():
    if os.geteuid() != 0:
        pytest.fail("these tests need root: they drop to a real other user (nobody)")


@pytest.fixture
def base():
    """A fresh 0755 directory in /tmp (tmp_path's parent is 0700: nobody could not enter)."""
    d = Path(tempfile.mkdtemp(prefix="dwr-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    for p in [d, *d.rglob("*")]:  # tests take permissions away; give them back to clean up
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
    shutil.rmtree(d, ignore_errors=True)


@dataclass
class Tree:
    data: Path
    db: Path
    docs: Path
    summary: legacy_tree.TreeSummary

    def args(self) -> list[str]:
        return ["--data-root", str(self.data), "--db", str(self.db), "--docs-root", str(self.docs)]


def build(root: Path, pending: bool = False) -> legacy_tree.TreeSummary:
    """A small finished tree (umask 0022, mtimes in the past); with ``pending``, one more raw
    attempt of ``normal_draft``'s task written two minutes ago and no parsed file (pending:
    the pairing window is ten minutes)."""
    old = os.umask(0o022)
    try:
        summary = legacy_tree.build_tree(root, combos=1, seed=7, quirks=False)
        if pending:
            raw = root / RAW / f"{normal_draft(summary)}_v9.txt"
            raw.write_bytes(b"a raw response whose parsed file never came\n")
            t = time.time() - 120
            os.utime(raw, (t, t))
    finally:
        os.umask(old)
    return summary


def normal_draft(summary: legacy_tree.TreeSummary) -> str:
    return summary.scenarios["draft_normal"][0]


def expected_parsed(tree: Tree, task: str) -> bytes:
    (attempt,) = [a for a in tree.summary.expected if a.task_id == task and a.stage == "draft"]
    return (tree.data / attempt.parsed).read_bytes()


@pytest.fixture(scope="module")
def warm():
    """Every command the children run, once as root in this process (lazy imports: the stdlib
    lives under /root, which nobody cannot read)."""
    scratch = Path(tempfile.mkdtemp(prefix="dwr-warm-", dir="/tmp"))
    try:
        data = scratch / "data"
        summary = build(data)
        task = normal_draft(summary)
        assert _warm_up(["scan", "--data-root", data]) == 0
        for args in (
            ["status", "--json"],
            ["status"],
            ["latest", "draft", task],
            ["latest", "draft", task, "--json"],
            ["latest", "draft", task, "--field", "parsed"],
            ["latest", "draft", "no_such_task"],
        ):
            assert _warm_up([*args, "--data-root", data]) in (0, 1)
        db = data / "db" / "documents.sqlite"
        with docwatch.DocumentsIndex(db, data / "docs") as idx:
            row = idx.get_latest_by_task("draft", task)
            idx.read_text(row, "parsed")
        assert _warm_up(["show", row["doc_id"], "--data-root", data]) == 0
        assert _warm_up(["status", "--db", scratch / "none.sqlite"]) == 3
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def indexed(base, warm) -> Tree:
    """A small tree indexed by ``docwatch scan`` (a subprocess, as root), one draft pending."""
    data = base / "data"
    summary = build(data, pending=True)
    tree = Tree(data, data / "db" / "documents.sqlite", data / "docs", summary)
    run = docwatch_proc("scan", *tree.args(), "--json")
    assert run.code == 0, run
    return tree


# --- 1. readers as another user, no docwatch process running ---------------------------------


def test_writer_leaves_index_files_readable_by_others(indexed):
    """After the scan exited: -wal and -shm exist, and every index file (and every document
    file and directory) is readable by others."""
    db_dir = indexed.db.parent
    for f in reader_files(indexed.db):
        assert f.exists(), f"{f.name} missing after the scan exited: readers need it"
    assert stat.S_IMODE(db_dir.stat().st_mode) & 0o005 == 0o005, oct(db_dir.stat().st_mode)
    for f in db_dir.iterdir():
        assert f.stat().st_mode & stat.S_IROTH, f"{f} is not readable by others"
    for p in indexed.docs.rglob("*"):
        need = 0o005 if p.is_dir() else 0o004
        assert stat.S_IMODE(p.stat().st_mode) & need == need, f"{p}: {oct(p.stat().st_mode)}"


def test_cli_readers_as_another_user(indexed):
    """latest, latest --field parsed, show and status --json as nobody: exit 0, right output,
    and the reader files are still there afterwards."""
    task = normal_draft(indexed.summary)
    latest = cli_as_nobody("latest", "draft", task, "--json", *indexed.args())
    assert latest.code == 0, latest
    row = json.loads(latest.out)
    assert row["task_id"] == task and row["status"] == "ok"

    plain = cli_as_nobody("latest", "draft", task, *indexed.args())
    assert plain.code == 0, plain
    assert row["doc_id"] in plain.text

    parsed = cli_as_nobody("latest", "draft", task, "--field", "parsed", *indexed.args())
    assert parsed.code == 0, parsed
    assert parsed.out == expected_parsed(indexed, task)

    show = cli_as_nobody("show", row["doc_id"], *indexed.args())
    assert show.code == 0, show
    assert row["doc_id"] in show.text and task in show.text

    status = cli_as_nobody("status", "--json", *indexed.args())
    assert status.code == 0, status
    assert json.loads(status.out)["documents"] == sum(indexed.summary.attempts.values()) + 1
    assert all(f.exists() for f in reader_files(indexed.db)), "a reader removed -wal/-shm"


def test_reader_api_as_another_user(indexed):
    task = normal_draft(indexed.summary)
    found = api_as_nobody(indexed.db, indexed.docs, "draft", task)
    assert "error" not in found, found
    assert found["row"]["task_id"] == task and found["row"]["status"] == "ok"
    assert found["parsed"] == expected_parsed(indexed, task).decode("utf-8", "replace")


# --- 2. reader files missing, and the reader may not create them -----------------------------


def test_missing_reader_files_is_a_permission_problem_not_corruption(indexed):
    for f in reader_files(indexed.db):
        f.unlink()
    task = normal_draft(indexed.summary)
    for args in (
        ["latest", "draft", task],
        ["latest", "draft", task, "--field", "parsed"],
        ["status", "--json"],
        ["show", "0123456789ab"],
    ):
        run = cli_as_nobody(*args, *indexed.args())
        assert run.code == 77, f"{args}: {run}"
        for word in ("documents.sqlite-wal", "documents.sqlite-shm", str(indexed.db.parent)):
            assert word in run.err, f"{args}: {word!r} not named: {run.err}"
        assert "write (w)" in run.err, run.err
        assert "corrupt" not in run.err.lower() and "rebuild-index" not in run.err, run.err
    found = api_as_nobody(indexed.db, indexed.docs, "draft", task)
    assert found.get("error") == IndexUnreadable.__name__, found
    assert "documents.sqlite-wal" in found["message"] and "write (w)" in found["message"]
    # the fix the message gives: any writer run once as the index's owner leaves them
    rerun = docwatch_proc("scan", *indexed.args())
    assert rerun.code == 0, rerun
    again = cli_as_nobody("status", "--json", *indexed.args())
    assert again.code == 0, again


# --- 3. other permission problems, and real corruption ---------------------------------------


def test_db_dir_without_search_permission_exit_77(indexed):
    indexed.db.parent.chmod(0o700)
    run = cli_as_nobody("status", *indexed.args())
    assert run.code == 77, run
    assert str(indexed.db.parent) in run.err and "search (x)" in run.err, run.err
    assert "corrupt" not in run.err.lower() and "rebuild-index" not in run.err, run.err
    found = api_as_nobody(indexed.db, indexed.docs, "draft", normal_draft(indexed.summary))
    assert found.get("error") == IndexUnreadable.__name__, found


@pytest.mark.parametrize("how", ["data-root", "db-flag"])
def test_index_file_without_read_permission_exit_77(indexed, how):
    """By the default path under --data-root, and named with --db (no usage error: exit 2)."""
    indexed.db.chmod(0o600)
    where = ["--data-root", indexed.data] if how == "data-root" else indexed.args()
    run = cli_as_nobody("latest", "draft", normal_draft(indexed.summary), *where)
    assert run.code == 77, run
    assert str(indexed.db) in run.err and "read (r)" in run.err, run.err
    assert "corrupt" not in run.err.lower() and "rebuild-index" not in run.err, run.err
    found = api_as_nobody(indexed.db, indexed.docs, "draft", normal_draft(indexed.summary))
    assert found.get("error") == IndexUnreadable.__name__, found


def test_a_file_that_is_not_a_database_is_corrupt_exit_3(indexed):
    """Not a permission problem: the message says what is wrong and to rebuild (even for a
    reader that could not create -wal/-shm either)."""
    for f in reader_files(indexed.db):
        f.unlink()
    indexed.db.write_bytes(b"this is not a database" * 100)
    run = cli_as_nobody("status", *indexed.args())
    assert run.code == 3, run
    assert str(indexed.db) in run.err and "rebuild-index" in run.err, run.err
    assert "not a usable" in run.err or "corrupt" in run.err.lower(), run.err
    found = api_as_nobody(indexed.db, indexed.docs, "draft", normal_draft(indexed.summary))
    assert found.get("error") == IndexCorrupt.__name__, found


# --- 4. status given as one string -----------------------------------------------------------


def test_status_as_a_plain_string(indexed):
    task = normal_draft(indexed.summary)
    with docwatch.DocumentsIndex(indexed.db, indexed.docs) as idx:
        as_set = idx.get_latest_by_task("draft", task, status={"ok"})
        assert idx.get_latest_by_task("draft", task, status="ok") == as_set
        assert as_set["status"] == "ok"
        pending = idx.get_latest_by_task("draft", task, status="pending")
        assert pending["status"] == "pending" and pending["doc_id"] != as_set["doc_id"]
        assert pending["meta_small"]["sources"]["raw"] == f"{RAW}/{task}_v9.txt"
        assert pending["meta_small"]["sources"]["parsed"] is None
        assert idx.get_latest_by_task("draft", task, status={"ok", "pending"}) == pending
        key = as_set["logical_key_id"]
        assert idx.get_latest_by_logical(key, status="ok") == idx.get_latest_by_logical(
            key, status={"ok"}
        )


# --- 5. a data root that does not exist ------------------------------------------------------


@pytest.mark.parametrize("command", ["scan", "verify", "watch"])
def test_missing_data_root_exit_2_creates_nothing(base, warm, command):
    typo = base / "typo"
    proc = subprocess.Popen(
        [PY, "-m", "docwatch", command, "--data-root", str(typo)],
        cwd=REPO,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        umask=0o022,
    )
    try:  # a watch that took the typo for a data root would run on: stop waiting early
        wait_until(lambda: proc.poll() is not None or typo.exists(), 60, what="exit")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    text = (out + err).decode(errors="replace")
    made = sorted(map(str, typo.rglob("*"))) if typo.exists() else "nothing"
    assert proc.returncode == 2, f"exit {proc.returncode} (created {made}): {text}"
    assert str(typo) in text and "does not exist" in text, text
    assert not typo.exists(), f"{command} created {made}"
    assert list(base.iterdir()) == []


# --- 6. docs_root not writable ---------------------------------------------------------------


def _counts(db: Path) -> int:
    return len(snapshot(db))


def test_docs_root_not_writable_by_another_user_exit_77_then_nothing_lost(base, warm):
    """nobody may read the data root and write the index's directory, not docs_root."""
    data, idx_dir, docs = base / "data", base / "idx", base / "docs"
    summary = build(data)
    idx_dir.mkdir()
    os.chown(idx_dir, NOBODY, NOBODY)
    docs.mkdir(mode=0o755)
    tree = Tree(data, idx_dir / "documents.sqlite", docs, summary)
    run = cli_as_nobody("scan", *tree.args(), env={"DOCWATCH_SETTLE_SECONDS": "0"})
    assert run.code == 77, run
    assert str(docs) in run.err and "permission" in run.err.lower(), run.err
    assert "internal error" not in run.err, run.err
    # fixed: the index's owner (root here) runs it again; everything is indexed
    rerun = docwatch_proc("scan", *tree.args(), "--json")
    assert rerun.code == 0, rerun
    assert _counts(tree.db) == sum(summary.attempts.values())
    verify = docwatch_proc("verify", *tree.args())
    assert verify.code == 0, verify


@pytest.fixture
def ro_mount(base):
    mnt = base / "ro"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {mnt} (the suite runs as root): {done.stderr}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_docs_root_on_a_read_only_filesystem_exit_77_then_nothing_lost(base, warm, ro_mount):
    data, docs = base / "data", ro_mount / "docs"
    summary = build(data)
    docs.mkdir()
    remount = subprocess.run(["mount", "-o", "remount,ro", str(ro_mount)], capture_output=True)
    assert remount.returncode == 0, f"remount ro failed: {remount.stderr!r}"
    tree = Tree(data, data / "db" / "documents.sqlite", docs, summary)
    run = docwatch_proc("scan", *tree.args())
    assert run.code == 77, run
    assert str(docs) in run.err and "read-only file system" in run.err.lower(), run.err
    assert "internal error" not in run.err, run.err
    # fixed: writable again; a rerun indexes everything
    subprocess.run(["mount", "-o", "remount,rw", str(ro_mount)], check=True)
    rerun = docwatch_proc("scan", *tree.args(), "--json")
    assert rerun.code == 0, rerun
    assert _counts(tree.db) == sum(summary.attempts.values())
    verify = docwatch_proc("verify", *tree.args())
    assert verify.code == 0, verify


# --- 7. rebuild-index while a writer holds the index -----------------------------------------


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_rebuild_index_refused_while_watch_runs(indexed, base):
    before = snapshot(indexed.db)
    notify = NotifySocket()
    log = base / "watch.log"
    with open(log, "wb") as out:
        watch = subprocess.Popen(
            [PY, "-m", "docwatch", "watch", *indexed.args()],
            cwd=REPO,
            env=clean_env(NOTIFY_SOCKET=notify.path),
            stdout=out,
            stderr=subprocess.STDOUT,
            umask=0o022,
        )
    try:
        wait_until(lambda: notify.seen("READY=1") or watch.poll() is not None, 60, what="READY")
        assert watch.poll() is None, log.read_text()
        db_files = {p.name for p in indexed.db.parent.iterdir()}
        ino, digest = indexed.db.stat().st_ino, _sha(indexed.db)

        refused = docwatch_proc("rebuild-index", *indexed.args())
        assert refused.code == 4, refused
        assert str(indexed.db) in refused.err and "stop it first" in refused.err, refused.err
        assert indexed.db.stat().st_ino == ino and _sha(indexed.db) == digest
        assert {p.name for p in indexed.db.parent.iterdir()} == db_files, "moved aside?"
        assert watch.poll() is None, "rebuild-index disturbed the running watch"

        watch.send_signal(signal.SIGTERM)
        assert watch.wait(30) == 0, log.read_text()
    finally:
        kill_if_running(watch)
        notify.close()
    rebuilt = docwatch_proc("rebuild-index", *indexed.args(), "--json")
    assert rebuilt.code == 0, rebuilt
    assert json.loads(rebuilt.out)["moved_aside"]
    assert snapshot(indexed.db) == before

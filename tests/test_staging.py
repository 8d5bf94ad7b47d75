"""The staging helper (``ingest/staging.py``, ``store/stager.py``): a real helper process,
real files, real SQLite, and ``docwatch scan`` as a real process killed with real signals."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from conftest import docs_tree, make_config, snapshot
from crashcheck import check_crash_state
from docwatch.ingest import pool
from docwatch.ingest.indexer import Indexer
from docwatch.ingest.scan import catch_up, scan
from docwatch.ingest.staging import StagingHelper
from pgserver import is_running
from support import NotifySocket, child_of, kill_if_running, wait_until, watch_process


def metadata_files(docs_root: Path) -> dict[str, dict]:
    """Every document's metadata.json, without the time it was written."""
    out = {}
    for path in sorted(docs_root.glob("*/*/metadata.json")):
        meta = json.loads(path.read_bytes())
        del meta["docwatch"]["written_at"]
        out[str(path.relative_to(docs_root))] = meta
    return out


def scan_in_process(cfg, *, helper: bool) -> bool:
    """A scan as ``docwatch scan`` makes it; returns whether the helper staged its batches."""
    indexer = Indexer(cfg, "test")
    staged = []  # after each batch: whether a live helper process staged it

    def after_batch(report) -> None:
        h = indexer.ingestor.helper
        staged.append(h is not None and h.proc is not None and not h.dead)

    try:
        indexer.recover()
        with indexer.staging_helper() if helper else contextlib.nullcontext():
            catch_up(indexer, after_batch)
        assert indexer.ingestor.helper is None, "the pass ended with its helper still there"
        return any(staged)
    finally:
        indexer.close()


def test_a_scan_through_the_helper_makes_what_staging_here_makes(tree, copy_tree, tmp_path):
    """Documents staged by the helper as they are planned are the documents the I/O threads
    stage after the plan: rows, copies and metadata.json."""
    data_root, _ = tree
    here_cfg = make_config(data_root, batch_max_files=7)
    assert not scan_in_process(here_cfg, helper=False)
    helper_cfg = make_config(copy_tree(data_root, tmp_path / "helper"), batch_max_files=7)
    assert scan_in_process(helper_cfg, helper=True), "the helper staged nothing"
    assert snapshot(helper_cfg.db) == snapshot(here_cfg.db)
    assert docs_tree(helper_cfg.docs_root) == docs_tree(here_cfg.docs_root)
    assert metadata_files(helper_cfg.docs_root) == metadata_files(here_cfg.docs_root)


def test_io_threads_0_and_link_mode_start_no_helper(tree):
    data_root, _ = tree
    try:
        pool.use_io_threads(0)
        assert not scan_in_process(make_config(data_root), helper=True)
    finally:
        pool.use_io_threads(None)
    assert not scan_in_process(make_config(data_root, link=True), helper=True)


def test_the_helper_reports_a_document_it_cannot_write_and_writes_the_others(tmp_path):
    """A document that fails is reported with its errno and path and removed whole when the
    helper made its directory; one it did not make is left alone."""
    root = tmp_path / "batch"
    (root / "taken").mkdir(parents=True)
    (root / "taken" / "keep").write_bytes(b"k")
    helper = StagingHelper()
    docs = [
        ("a", [("raw.txt", b"x"), ("metadata.json", b"{}")]),
        ("taken", [("raw.txt", b"y")]),
        ("half", [("raw.txt", b"z"), ("no/such.txt", b"w")]),
    ]
    try:
        assert helper.send(("begin", str(root), 0o640, 0o750))
        assert helper.send(("docs", docs))
        assert helper.send(("end",))
        failed = helper.reply()
    finally:
        proc = helper.proc
        helper.close()
    assert proc is not None and proc.returncode == 0, "the helper did not end at its EOF"
    assert failed == {
        "taken": (errno.EEXIST, "File exists", str(root / "taken")),
        "half": (errno.ENOENT, "No such file or directory", str(root / "half" / "no/such.txt")),
    }
    assert (root / "a" / "raw.txt").read_bytes() == b"x"
    assert (root / "a" / "metadata.json").stat().st_mode & 0o777 == 0o640 & ~_umask()
    assert sorted(p.name for p in (root / "taken").iterdir()) == ["keep"]
    assert not (root / "half").exists()
    assert helper.proc is None and not helper.dead


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def start_scan(data_root: Path, batch_max: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCWATCH_")}
    env |= {"DOCWATCH_SETTLE_SECONDS": "0", "DOCWATCH_BATCH_MAX_FILES": str(batch_max)}
    return subprocess.Popen(
        [sys.executable, "-m", "docwatch", "scan", "--run-id", "test", "--data-root", data_root],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def helper_of(pid: int) -> int | None:
    """The staging helper among ``pid``'s children."""
    return child_of(pid, b"stager.py")


def test_a_helper_killed_mid_scan_loses_nothing(tree, copy_tree, tmp_path):
    """SIGKILL to the helper while a scan runs: the scan stages its documents itself from
    then on, says so once, exits 0, and indexes what a scan without the kill indexes."""
    data_root, _ = tree
    golden = make_config(data_root)
    scan(golden, run_id="test")
    other = copy_tree(data_root, tmp_path / "killed")
    proc = start_scan(other, batch_max=4)
    helper = wait_until(
        lambda: helper_of(proc.pid) or proc.poll() is not None, 60, 0.002, what="helper"
    )
    assert helper is not True, "the scan ended without a staging helper"
    os.kill(helper, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert err.count("the staging helper process") == 1, err
    assert f"(pid {helper}, exit -9)" in err and "nothing is lost" in err, err
    cfg = make_config(other)
    assert snapshot(cfg.db) == snapshot(golden.db)
    assert docs_tree(cfg.docs_root) == docs_tree(golden.docs_root)
    assert metadata_files(cfg.docs_root) == metadata_files(golden.docs_root)
    assert not list((cfg.docs_root / ".tmp").rglob("metadata.json")), "staging left behind"


def test_the_helper_dies_with_its_scan(tree):
    """SIGKILL to ``docwatch scan``: its helper does not outlive it, even stopped where no
    EOF reaches it (PR_SET_PDEATHSIG); the next scan clears what the two left staged."""
    data_root, _ = tree
    cfg = make_config(data_root)
    proc = start_scan(data_root, batch_max=4)
    helper = wait_until(lambda: helper_of(proc.pid), timeout=60, interval=0.002, what="helper")
    # Once it wrote a document it is past its start (where it asks to die with its parent).
    wait_until(lambda: next(cfg.docs_root.rglob("metadata.json"), None), interval=0.002)
    os.kill(helper, signal.SIGSTOP)
    proc.kill()
    proc.wait(timeout=60)  # not its stderr's EOF: a helper that stays behind holds it open
    proc.stderr.close()
    wait_until(lambda: not is_running(helper), timeout=10, what="the helper to end with its parent")
    assert scan(cfg, run_id="again").problems == []
    assert not list((cfg.docs_root / ".tmp").rglob("*.txt")), "staging left behind"


def test_the_daemon_catches_up_through_a_helper_and_keeps_none(tree, copy_tree, tmp_path):
    """``docwatch watch`` started on a backlog stages its start-up catch-up through a helper
    process, which ends with the pass: the daemon is READY with no child, and it indexed
    what a scan of the same tree indexes."""
    data_root, _ = tree
    golden = golden_scan(data_root, copy_tree, tmp_path)
    proc, notify, log = start_watch(data_root, tmp_path)
    try:
        wait_until(lambda: notify.seen("READY=1") or proc.poll() is not None, 60, what="READY")
        text = log.read_text(errors="replace")
        assert proc.poll() is None, text
        started = re.findall(r"staging helper process started \(pid (\d+)\)", text)
        assert len(started) == 1, "the catch-up did not stage through one helper:\n" + text
        assert f"staging helper process (pid {started[0]}) ended (exit 0)" in text, text
        assert helper_of(proc.pid) is None and not is_running(int(started[0])), (
            "a helper outlived it"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        notify.close()
    assert proc.returncode == 0, log.read_text(errors="replace")
    cfg = make_config(data_root)
    assert snapshot(cfg.db) == snapshot(golden.db)
    assert docs_tree(cfg.docs_root) == docs_tree(golden.docs_root)


def golden_scan(data_root: Path, copy_tree, tmp_path: Path):
    """The config of a scan of a copy of the tree: what the daemon must index."""
    golden = make_config(copy_tree(data_root, tmp_path / "golden"))
    scan(golden, run_id="test")
    return golden


def start_watch(data_root: Path, tmp_path: Path) -> tuple[subprocess.Popen, NotifySocket, Path]:
    """``docwatch watch`` in a process group of its own (as systemd's cgroup), logging DEBUG
    to the returned file, with a notify socket standing in for systemd's."""
    notify, log = NotifySocket(), tmp_path / "watch.log"
    env = {"DOCWATCH_SETTLE_SECONDS": "0", "DOCWATCH_BATCH_MAX_FILES": "4"}
    args = ["--data-root", data_root, "--log-level", "DEBUG"]
    proc = watch_process(args, log, notify, env=env, start_new_session=True)
    return proc, notify, log


def test_sigterm_to_the_whole_group_mid_catch_up_stops_the_daemon_cleanly(
    tree, copy_tree, tmp_path
):
    """systemd stops a service by SIGTERM to every process of its cgroup (a Ctrl-C reaches a
    terminal's whole group): the helper leaves the signal to the daemon, which finishes its
    batch, ends the helper, exits 0 with no warning, and loses nothing (a scan completes it)."""
    data_root, _ = tree
    golden = golden_scan(data_root, copy_tree, tmp_path)
    proc, notify, log = start_watch(data_root, tmp_path)
    try:
        helper = wait_until(
            lambda: helper_of(proc.pid) or proc.poll() is not None, 60, 0.002, what="helper"
        )
        assert helper is not True, log.read_text(errors="replace")
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        kill_if_running(proc)
        notify.close()
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, text
    assert f"staging helper process (pid {helper}) ended (exit 0)" in text, text
    assert "WARNING" not in text, text
    cfg = make_config(data_root)
    scan(cfg, run_id="test")
    assert snapshot(cfg.db) == snapshot(golden.db)
    assert docs_tree(cfg.docs_root) == docs_tree(golden.docs_root)


def test_the_daemon_killed_mid_catch_up_leaves_no_helper_and_a_restart_converges(
    tree, copy_tree, tmp_path
):
    """SIGKILL to ``docwatch watch`` while its helper stages the catch-up (the helper stopped,
    so no EOF ends it): the helper dies with it, what the kill left is durable before visible
    (every row a complete document, no orphan directory), and a restart indexes each source
    exactly once, as a scan does."""
    data_root, _ = tree
    golden = golden_scan(data_root, copy_tree, tmp_path)
    cfg = make_config(data_root)
    proc, notify, log = start_watch(data_root, tmp_path)
    try:
        helper = wait_until(
            lambda: helper_of(proc.pid) or proc.poll() is not None, 60, 0.002, what="helper"
        )
        assert helper is not True, log.read_text(errors="replace")
        # Past its start (where it asks to die with its parent) once it wrote a document.
        wait_until(lambda: next(cfg.docs_root.rglob("metadata.json"), None), interval=0.002)
        os.kill(helper, signal.SIGSTOP)
        proc.kill()
        proc.wait(timeout=60)
    finally:
        kill_if_running(proc)
        notify.close()
    wait_until(lambda: not is_running(helper), timeout=10, what="the helper to end with the daemon")
    check_crash_state(cfg)
    (tmp_path / "again").mkdir()
    again, notify, _ = start_watch(data_root, tmp_path / "again")
    try:
        wait_until(lambda: notify.seen("READY=1") or again.poll() is not None, 60, what="READY")
        assert again.poll() is None
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(timeout=30)
        notify.close()
    assert again.returncode == 0
    assert snapshot(cfg.db) == snapshot(golden.db)
    assert docs_tree(cfg.docs_root) == docs_tree(golden.docs_root)
    assert not list((cfg.docs_root / ".tmp").rglob("*.txt")), "staging left behind"

"""The staging helper (``ingest/staging.py``, ``store/stager.py``): a real helper process,
real files, real SQLite, and ``docwatch scan`` as a real process killed with real signals."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import docs_tree, make_config, snapshot
from docwatch.ingest import pool
from docwatch.ingest.indexer import Indexer
from docwatch.ingest.scan import catch_up, scan
from docwatch.ingest.staging import StagingHelper
from support import wait_until


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
    indexer = Indexer(cfg, "test", staging_helper=helper)
    try:
        indexer.recover()
        catch_up(indexer, lambda report: None)
        staged_by = indexer.ingestor.helper
        return staged_by is not None and staged_by.proc is not None and not staged_by.dead
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
        indexer = Indexer(make_config(data_root), "test", staging_helper=True)
        indexer.close()
        assert indexer.ingestor.helper is None
    finally:
        pool.use_io_threads(None)
    indexer = Indexer(make_config(data_root, link=True), "test", staging_helper=True)
    indexer.close()
    assert indexer.ingestor.helper is None


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
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for child in map(int, children):
            if b"stager.py" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def gone(pid: int) -> bool:
    """The process ended (a zombie left to a parent that does not reap counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_helper_killed_mid_scan_loses_nothing(tree, copy_tree, tmp_path):
    """SIGKILL to the helper while a scan runs: the scan stages its documents itself from
    then on, says so once, exits 0, and indexes what a scan without the kill indexes."""
    data_root, _ = tree
    golden = make_config(data_root)
    scan(golden, run_id="test")
    other = copy_tree(data_root, tmp_path / "killed")
    proc = start_scan(other, batch_max=4)
    helper = wait_until(lambda: helper_of(proc.pid), timeout=60, interval=0.002, what="helper")
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
    proc.communicate(timeout=60)
    wait_until(lambda: gone(helper), timeout=10, what="the helper to end with its parent")
    assert scan(cfg, run_id="again").problems == []
    assert not list((cfg.docs_root / ".tmp").rglob("*.txt")), "staging left behind"

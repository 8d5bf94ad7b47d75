"""Environmental faults: a real full disk, a locked index, changed sources, file modes."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import SNAPSHOT_COLUMNS, docs_tree, make_config, snapshot, staged_batches
from docwatch.ingest.pool import use_io_threads
from docwatch.ingest.scan import scan
from docwatch.ingest.verify import verify
from docwatch.store import faults
from docwatch.store.docstore import DocStore, FileSource, SourceChanged


def _mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a small tmpfs; None, or why it could not be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    return None if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")


@pytest.fixture
def small_fs(tmp_path):
    """A really full filesystem: the evidence for the "full disk" guarantee, so it never skips
    (make test runs as root; a machine that cannot mount fails here, with the reason)."""
    mnt = tmp_path / "small"
    if os.geteuid() != 0:
        pytest.fail("the full-disk test mounts a tmpfs: run the suite as root (CI does)")
    problem = _mount_tmpfs(mnt, "400k")
    if problem is not None:
        pytest.fail(f"cannot mount a 400 KiB tmpfs at {mnt}: {problem}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_disk_full_backs_off_and_resumes_by_itself(tree, copy_tree, tmp_path, small_fs):
    data_root, _ = tree
    golden_cfg = make_config(data_root)
    scan(golden_cfg, run_id="r")
    victim = copy_tree(data_root, tmp_path / "victim")
    env = {**os.environ, "DOCWATCH_SETTLE_SECONDS": "0", "DOCWATCH_BATCH_MAX_FILES": "40"}
    cmd = [
        sys.executable,
        "-m",
        "docwatch",
        "scan",
        "--run-id",
        "r",
        "--data-root",
        str(victim),
        "--docs-root",
        str(small_fs / "docs"),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    stderr_lines = []
    while time.monotonic() < deadline:  # wait until the scan reports the full disk
        line = proc.stderr.readline()
        stderr_lines.append(line)
        if "disk full" in line or not line:
            break
    assert any("disk full" in line for line in stderr_lines), "".join(stderr_lines)
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    cfg = make_config(victim, docs_root=small_fs / "docs")
    columns = [c for c in SNAPSHOT_COLUMNS if c != "doc_dir"]  # docs live elsewhere here
    assert snapshot(cfg.db, columns) == snapshot(golden_cfg.db, columns)
    assert docs_tree(cfg.docs_root) == docs_tree(golden_cfg.docs_root)
    assert verify(cfg).ok


def test_index_locked_by_another_process_waits_and_loses_nothing(tree):
    data_root, summary = tree
    cfg = make_config(data_root)
    scan(cfg, run_id="r", stages=("draft",))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            f"con = sqlite3.connect({str(cfg.db)!r}, isolation_level=None)\n"
            "con.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(3)\n"
            "con.execute('COMMIT')",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    result = scan(cfg, run_id="r")
    holder.wait(timeout=30)
    assert sum(c["docs_created"] for c in result.counts.values()) > 0
    con = sqlite3.connect(cfg.db)
    assert con.execute("SELECT count(*) FROM documents").fetchone()[0] == sum(
        summary.attempts.values()
    )


def test_second_writer_waits_for_the_writer_lock(tree, copy_tree, tmp_path):
    """Two scans at once on the same index: each source still yields exactly one document."""
    data_root, summary = tree
    cfg = make_config(data_root, batch_max_files=20)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(scan(cfg, run_id="r"))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    created = sum(sum(c["docs_created"] for c in r.counts.values()) for r in results)
    assert created == sum(summary.attempts.values())
    assert verify(cfg).ok


def test_a_writer_recovers_only_its_own_staging_in_a_shared_docs_root(tree, tmp_path):
    """Two indexes share one docs root: one dies mid-batch (``os._exit`` after its files are
    synced); the other's start-up recovery and scan leave that staging alone, and the dead
    writer's own restart clears it and finishes."""
    data_root, summary = tree
    docs = tmp_path / "shared-docs"

    def scan_into(db: Path, fault: str | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "DOCWATCH_SETTLE_SECONDS": "0"}
        env.pop("DOCWATCH_FAULT", None)
        if fault:
            env["DOCWATCH_FAULT"] = fault
        common = ["--data-root", str(data_root), "--db", str(db), "--docs-root", str(docs)]
        return subprocess.run(
            [sys.executable, "-m", "docwatch", "scan", "--run-id", "r", *common],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    db_a, db_b = tmp_path / "a" / "documents.sqlite", tmp_path / "b" / "documents.sqlite"
    crashed = scan_into(db_b, "files_synced:1:exit")
    assert crashed.returncode == 86, crashed.stderr
    left = staged_batches(docs)
    assert left and all(any(p.rglob("*.txt")) for p in left), left
    left_files = {p: p.read_bytes() for batch in left for p in batch.rglob("*") if p.is_file()}

    other = scan_into(db_a)
    assert other.returncode == 0, other.stderr
    assert {p: p.read_bytes() for p in left_files if p.exists()} == left_files

    again = scan_into(db_b)
    assert again.returncode == 0, again.stderr
    assert staged_batches(docs) == []
    assert snapshot(db_a) == snapshot(db_b)
    for db in (db_a, db_b):
        cfg = make_config(data_root, db=db, docs_root=docs)
        assert verify(cfg).ok, verify(cfg).problems
    assert len(snapshot(db_b)) == sum(summary.attempts.values())


def test_source_changed_between_hash_and_copy_is_refused(tmp_path):
    src = tmp_path / "src.txt"
    src.write_bytes(b"new bytes" * 200_000)  # streamed (> 1 MiB)
    store = DocStore(tmp_path / "docs")
    batch = store.begin()
    stale = hashlib.sha256(b"old bytes").hexdigest()
    with pytest.raises(SourceChanged):
        batch.stage("abcdefabcdef1234", "draft", "create", {"raw.txt": FileSource(src, stale)})
    assert not any(batch.root.iterdir())
    batch.cleanup()
    assert not batch.root.exists()


def test_documents_get_configured_modes_under_the_umask(tree):
    data_root, _ = tree
    old = os.umask(0o022)
    try:
        cfg = make_config(data_root, file_mode=0o640, dir_mode=0o750)
        scan(cfg, run_id="r")
    finally:
        os.umask(old)
    doc = next((cfg.docs_root / "draft").iterdir())
    assert stat.S_IMODE(doc.stat().st_mode) == 0o750
    assert stat.S_IMODE((doc / "metadata.json").stat().st_mode) == 0o640
    for path in doc.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path


def test_hostile_names_never_escape_the_docs_root(tmp_path):
    """Task ids come from file names; document paths come only from base36 ids."""
    data_root = tmp_path / "data"
    folder = data_root / "3_generation/draft_responses"
    folder.mkdir(parents=True)
    for name in (
        "a..b__x__y_v1.txt",
        "a b;rm -rf ~__t__m_v1.txt",
        "'; DROP TABLE documents;--_v1.txt",
    ):
        (folder / name).write_bytes(b"x")
        os.utime(folder / name, (1, 1))
    cfg = make_config(data_root)
    scan(cfg, run_id="r")
    dirs = [p for p in cfg.docs_root.rglob("*") if p.is_dir() and p.name != ".tmp"]
    for d in dirs:
        assert d.resolve().is_relative_to(cfg.docs_root.resolve())
    con = sqlite3.connect(cfg.db)
    tasks = {r[0] for r in con.execute("SELECT task_id FROM documents")}
    assert "'; DROP TABLE documents;--" in tasks and "a..b__x__y" in tasks


def test_rows_stay_invisible_until_their_renames_are_durable(tree):
    """A batch's renames and their sync run on an I/O thread beside its rows' statements: a
    reader sees none of the batch's rows until the renames are durable.  The hook on the I/O
    thread watches through its own connection for a while at the end of every publish; a
    commit that did not wait for it would show up there."""
    data_root, _ = tree
    cfg = make_config(data_root, batch_max_files=40)
    seen = {"batches": 0, "early": [], "late": []}
    before: list[int] = []

    def visible() -> int:
        con = sqlite3.connect(f"file:{cfg.db}?mode=ro", uri=True)
        try:
            return con.execute("SELECT count(*) FROM documents").fetchone()[0]
        finally:
            con.close()

    def hook(point: str) -> None:
        if point == "intents_committed":
            before.append(visible())
        elif point == "dirs_synced":
            seen["batches"] += 1
            deadline = time.monotonic() + 0.05
            while time.monotonic() < deadline:
                if visible() != before[-1]:
                    seen["early"].append(point)
                    break
        elif point == "committed" and visible() == before[-1]:
            seen["late"].append(point)

    use_io_threads(2)  # the renames on a thread of their own, whatever the machine's cores
    faults.set_hook(hook)
    try:
        scan(cfg, run_id="r")
    finally:
        faults.set_hook(None)
        use_io_threads(None)
    assert seen["batches"] >= 3, seen
    assert seen["early"] == [], f"rows visible before their renames were durable: {seen}"
    assert seen["late"] == [], f"a batch committed no row: {seen}"

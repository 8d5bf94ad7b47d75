"""Integration tests of scan: generated trees, real files, real SQLite."""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import time
import tracemalloc
from collections import Counter
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import legacy_tree
import pytest
from conftest import docs_tree, make_config, snapshot
from docwatch import DocumentsIndex
from docwatch.ingest import pool
from docwatch.ingest.indexer import Indexer
from docwatch.ingest.scan import ProbeAhead, _never, list_candidates, scan
from docwatch.ingest.sources import Stat, _hash
from docwatch.ingest.verify import verify
from docwatch.store.rebuild import rebuild

RAW = "3_generation/draft_responses_raw"
PARSED = "3_generation/draft_responses"


def run_scan(data_root: Path, **over):
    cfg = make_config(data_root, **over)
    return cfg, scan(cfg, run_id="test")


def stage_totals(result, key):
    return {s: c[key] for s, c in result.counts.items()}


def test_scan_makes_the_expected_documents(tree):
    data_root, summary = tree
    cfg, result = run_scan(data_root)
    assert stage_totals(result, "docs_created") == summary.attempts
    rows = snapshot(cfg.db)
    got = Counter((r[2], r[3], r[9]) for r in rows.values())
    want = Counter((a.stage, a.task_id, a.status) for a in summary.expected)
    assert got == want
    for scenario in ("draft_parse_fail", "essay_copy", "essay_truncated", "missing_from_tables"):
        assert summary.scenarios.get(scenario), f"tree lacks scenario {scenario}"


def test_second_scan_creates_nothing_and_reads_nothing(tree):
    data_root, _ = tree
    cfg, first = run_scan(data_root)
    before = snapshot(cfg.db)
    _, second = run_scan(data_root)
    assert sum(stage_totals(second, "docs_created").values()) == 0
    assert sum(stage_totals(second, "docs_updated").values()) == 0
    assert sum(stage_totals(second, "new").values()) == 0
    assert sum(stage_totals(second, "indexed").values()) == sum(stage_totals(first, "new").values())
    assert snapshot(cfg.db) == before


def test_verify_clean_and_rebuild_reproduces_rows(tree):
    data_root, _ = tree
    cfg, _ = run_scan(data_root)
    report = verify(cfg)
    assert report.ok, report.problems
    before = snapshot(cfg.db, columns=("*",))
    cfg.db.unlink()
    rebuild(cfg.db, cfg.docs_root)
    assert snapshot(cfg.db, columns=("*",)) == before
    assert verify(cfg).ok


def test_documents_hold_byte_identical_copies_and_metadata(tree):
    data_root, _ = tree
    cfg, _ = run_scan(data_root)
    with DocumentsIndex(cfg.db, cfg.docs_root) as idx:
        for (doc_id,) in idx.execute("SELECT doc_id FROM documents"):
            row = idx.get(doc_id)
            meta = json.loads((idx.resolve_doc_dir(row) / "metadata.json").read_text())
            assert meta["row"]["doc_id"] == doc_id
            for kind, source in meta["provenance"]["sources"].items():
                assert row["meta_small"]["sources"][kind] == (source and source["path"])
                if source:
                    assert idx.read_bytes(row, kind) == (data_root / source["path"]).read_bytes()


def test_parents_link_to_latest_ok_draft_and_evaluations_to_targets(tree):
    data_root, summary = tree
    cfg, _ = run_scan(data_root)
    con = sqlite3.connect(cfg.db)
    rows = {
        r[0]: r for r in con.execute("SELECT doc_id, stage, parent_doc_id, status FROM documents")
    }
    missing = set(summary.scenarios.get("missing_from_tables", []))
    for doc_id, stage, parent, _status in rows.values():
        task = con.execute("SELECT task_id FROM documents WHERE doc_id=?", (doc_id,)).fetchone()[0]
        if stage == "draft" or task in missing:
            continue
        assert parent in rows, f"{stage} {task} unlinked"
        assert rows[parent][3] == "ok"


def test_any_batching_and_order_converges_to_one_scan(tree, copy_tree, tmp_path):
    data_root, _ = tree
    golden_cfg, _ = run_scan(data_root)
    golden = snapshot(golden_cfg.db)
    for seed in range(3):
        other = copy_tree(data_root, tmp_path / f"copy{seed}")
        cfg = make_config(other)
        cands = list_candidates(cfg, ("draft", "essay", "evaluation"))
        rnd = random.Random(seed)
        rnd.shuffle(cands)
        indexer = Indexer(cfg, "test")
        try:
            while cands:
                n = rnd.randint(1, 7)
                indexer.ingest(cands[:n], ready=True)
                cands = cands[n:]
            indexer.expire_pending()
        finally:
            indexer.close()
        assert snapshot(cfg.db) == golden, f"seed {seed} diverged"
        assert docs_tree(cfg.docs_root) == docs_tree(golden_cfg.docs_root)


def test_io_threads_and_the_caller_make_the_same_documents(tree, copy_tree, tmp_path):
    """Reading and staging on the I/O threads or all on the caller (``io_threads = 0``)
    make the same documents."""
    data_root, _ = tree
    try:
        pool.use_io_threads(0)
        serial_cfg, _ = run_scan(data_root)
        assert pool._pool is None, "io_threads = 0 made I/O threads"
        pool.use_io_threads(2)
        threaded_cfg, _ = run_scan(copy_tree(data_root, tmp_path / "threaded"))
        assert pool._pool is not None, "no batch went to the I/O threads"
        assert pool._pool._max_workers == 2
    finally:
        pool.use_io_threads(None)
    assert snapshot(threaded_cfg.db) == snapshot(serial_cfg.db)
    assert docs_tree(threaded_cfg.docs_root) == docs_tree(serial_cfg.docs_root)


def test_a_scan_probing_each_batch_ahead_makes_what_one_batch_makes(tree, copy_tree, tmp_path):
    """Small batches, each probed while the one before it commits, make the
    documents a single batch makes."""
    data_root, _ = tree
    one_cfg, _ = run_scan(data_root)
    many_cfg, result = run_scan(copy_tree(data_root, tmp_path / "many"), batch_max_files=5)
    assert sum(stage_totals(result, "new").values()) > 5 * 10, "expected many batches"
    assert snapshot(many_cfg.db) == snapshot(one_cfg.db)
    assert docs_tree(many_cfg.docs_root) == docs_tree(one_cfg.docs_root)


def test_an_error_taking_the_next_batch_surfaces_after_this_batch_commits(tree):
    """The next batch is listed and probed from inside this one (after its rows): an
    error there is this scan's error once this batch is done, never this batch's."""
    data_root, _ = tree
    cfg = make_config(data_root)
    cands = list_candidates(cfg, ("draft",))

    def batches():
        yield cands
        raise RuntimeError("listing the next batch failed")

    indexer = Indexer(cfg, "test")
    committed = []
    try:
        ahead = ProbeAhead(indexer, batches())
        with pytest.raises(RuntimeError, match="listing the next batch failed"):
            for batch, probed in ahead:
                indexer.ingest(batch, known=_never, probed=probed, then=ahead.start_next)
                committed.append(len(snapshot(cfg.db)))
    finally:
        indexer.close()
    assert committed and committed[0] > 0, "the batch before the error was not committed"


def test_a_batch_lets_its_bytes_go_before_the_next_batch_is_read(tree):
    """``then`` (where a scan starts reading its next batch) runs once the batch's rows are
    written, with its sources' bytes released: a scan holds one batch's bytes at a time."""
    data_root, _ = tree
    cfg = make_config(data_root)
    cands = list_candidates(cfg, ("draft",))
    indexer = Indexer(cfg, "test")
    try:
        outcomes = indexer.ingestor.start_probe(cands, ready=False, known=_never)()
        assert sum(o.content is not None for o in outcomes) > 10
        held: list[int] = []
        report = indexer.ingest(
            cands,
            probed=lambda: outcomes,
            then=lambda: held.append(sum(o.content is not None for o in outcomes)),
        )
    finally:
        indexer.close()
    assert sum(stage_totals_of(report, "docs_created")) > 10
    assert held == [0], f"{held} sources still held their bytes when the next batch began"


def stage_totals_of(report, key):
    return [n for (_, k), n in report.counts.items() if k == key]


def test_link_mode_hard_links_and_verifies(tree):
    data_root, _ = tree
    cfg, _ = run_scan(data_root, link=True)
    with DocumentsIndex(cfg.db, cfg.docs_root) as idx:
        row = idx.execute('SELECT * FROM documents WHERE meta_small LIKE \'%"raw": "%\' LIMIT 1')
        doc = idx.get(row[0]["doc_id"])
        raw = idx.resolve_doc_dir(doc) / "raw.txt"
        src = data_root / doc["meta_small"]["sources"]["raw"]
        assert os.stat(raw).st_ino == os.stat(src).st_ino
    assert verify(cfg).ok


def test_dry_run_writes_nothing(tree):
    data_root, _ = tree
    cfg, result = run_scan(data_root, dry_run=None)
    cfg = make_config(data_root)
    cfg.db.unlink()
    import shutil

    shutil.rmtree(cfg.docs_root)
    dry = scan(cfg, run_id="x", dry_run=True)
    assert not cfg.db.exists() and not cfg.docs_root.exists()
    assert stage_totals(dry, "new") == stage_totals(result, "new")


# --- bad input ----------------------------------------------------------------------------


def write(path: Path, data: bytes, age: float = 3600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    t = time.time() - age
    os.utime(path, (t, t))
    return path


def problems_of(result) -> dict[str, str]:
    return dict(result.problems)


def test_symlink_never_followed_noise_ignored(tmp_path):
    data_root = tmp_path / "data"
    (data_root / RAW).mkdir(parents=True)
    os.symlink("/etc/passwd", data_root / RAW / "evil__t__m_v1.txt")
    for noise in (".DS_Store", "a__b__c_v1.txt.tmp", "x.txt~", "notes.md"):
        write(data_root / RAW / noise, b"noise")
    (data_root / RAW / "subfolder").mkdir()
    cfg, result = run_scan(data_root)
    assert "symbolic link" in problems_of(result)[f"{RAW}/evil__t__m_v1.txt"]
    assert result.counts["draft"]["ignored"] == 5
    assert (
        not any(p.name == "raw.txt" for p in cfg.docs_root.rglob("*"))
        if cfg.docs_root.exists()
        else True
    )
    con = sqlite3.connect(cfg.db)
    assert con.execute("SELECT count(*) FROM documents").fetchone()[0] == 0
    assert con.execute("SELECT reason FROM problems").fetchone()[0].startswith("symbolic link")


def test_undecodable_bytes_and_unicode_ids_copied_byte_for_byte(tmp_path):
    data_root = tmp_path / "data"
    blob = b"caf\xc3\xa9 \xff\xfe broken \x80 bytes\n"
    task = "combo_\u00e9t\u00e9__creative-synthesis-v2__sonnet-4"
    write(data_root / RAW / f"{task}_v1.txt", blob)
    write(data_root / PARSED / f"{task}_v1.txt", blob, age=3500)
    cfg, result = run_scan(data_root)
    with DocumentsIndex(cfg.db, cfg.docs_root) as idx:
        row = idx.get_latest_by_task("draft", task)
        assert idx.read_bytes(row, "raw") == blob
        assert "\ufffd" in idx.read_text(row, "parsed")


def test_large_file_is_streamed_with_flat_memory(tmp_path):
    data_root = tmp_path / "data"
    big = os.urandom(1 << 20) * 30  # 30 MiB
    write(data_root / PARSED / "big__creative-synthesis-v2__sonnet-4_v1.txt", big)
    tracemalloc.start()
    cfg, result = run_scan(data_root)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 << 20, f"peak Python allocation {peak} bytes for a 30 MiB file"
    with DocumentsIndex(cfg.db, cfg.docs_root) as idx:
        row = idx.get_latest_by_task("draft", "big__creative-synthesis-v2__sonnet-4")
        assert (idx.resolve_doc_dir(row) / "parsed.txt").stat().st_size == len(big)


def test_oversized_file_reported_not_copied(tmp_path):
    data_root = tmp_path / "data"
    write(data_root / PARSED / "huge__t__m_v1.txt", b"x" * 5000)
    cfg, result = run_scan(data_root, max_file_bytes=4096)
    assert "exceeds max_file_bytes" in problems_of(result)[f"{PARSED}/huge__t__m_v1.txt"]


def test_a_problem_goes_when_its_file_is_ingested_and_only_then(tmp_path):
    """`status` counts source problems from the index: a file rewritten to good bytes is
    ingested and its problem row goes; the other files' problems stay."""
    data_root = tmp_path / "data"
    names = [f"{PARSED}/huge{i}__t__m_v1.txt" for i in range(3)]
    for name in names:
        write(data_root / name, b"x" * 5000)
    cfg, _ = run_scan(data_root, max_file_bytes=4096)
    problem_rows = "SELECT relpath FROM problems ORDER BY relpath"
    with closing(sqlite3.connect(cfg.db)) as con:
        assert [r[0] for r in con.execute(problem_rows)] == names
    write(data_root / names[1], b"fits now")
    run_scan(data_root, max_file_bytes=4096)
    with closing(sqlite3.connect(cfg.db)) as con:
        assert [r[0] for r in con.execute(problem_rows)] == [names[0], names[2]]
        ledger = con.execute("SELECT relpath FROM sources").fetchall()
        assert [r[0] for r in ledger] == [names[1]]


def test_young_file_left_for_later_then_indexed(tmp_path):
    data_root = tmp_path / "data"
    write(data_root / RAW / "young__t__m_v1.txt", b"partial", age=0)
    cfg, result = run_scan(data_root, settle_seconds=30)
    assert result.counts["draft"]["deferred"] == 1
    assert result.counts["draft"]["docs_created"] == 0
    old = time.time() - 60
    os.utime(data_root / RAW / "young__t__m_v1.txt", (old, old))
    _, result = run_scan(data_root, settle_seconds=30)
    assert result.counts["draft"]["docs_created"] == 1


def test_vanished_between_listing_and_reading(tmp_path):
    data_root = tmp_path / "data"
    gone = write(data_root / RAW / "gone__t__m_v1.txt", b"x")
    write(data_root / RAW / "kept__t__m_v1.txt", b"y")
    cfg = make_config(data_root)
    cands = list_candidates(cfg, ("draft",))
    gone.unlink()
    indexer = Indexer(cfg, "t")
    try:
        report = indexer.ingest(cands)
    finally:
        indexer.close()
    assert report.counts[("draft", "docs_created")] == 1
    assert report.counts[("draft", "ignored")] == 1


def test_bytes_rewritten_after_their_stat_are_described_by_what_was_read(tmp_path):
    """The daemon probes with the stat its readiness rule took, a moment before the read: a
    file rewritten in that moment (same inode, new bytes, new mtime) is recorded with the size
    and mtime of the bytes read, never with the earlier stat's."""
    data_root = tmp_path / "data"
    path = write(data_root / RAW / "late__t__m_v1.txt", b"first bytes\n")
    cfg = make_config(data_root)
    # each with its lstat taken now, as the daemon's readiness rule passes it to the probe
    cands = [replace(c, lstat=Stat.of(os.lstat(c.path))) for c in list_candidates(cfg, ("draft",))]
    with open(path, "r+b") as f:  # in place, as the pipeline writes raw files
        f.write(b"second, longer bytes\n")
    os.utime(path, ns=(cands[0].lstat.st_mtime_ns + 10**9,) * 2)
    indexer = Indexer(cfg, "t")
    try:
        indexer.ingest(cands, ready=True)
    finally:
        indexer.close()
    st = path.stat()
    rows = sqlite3.connect(cfg.db).execute("SELECT size, seen_size, seen_mtime_ns FROM sources")
    assert rows.fetchall() == [(st.st_size, st.st_size, st.st_mtime_ns)]
    (doc,) = docs_tree(cfg.docs_root).values()
    assert doc == b"second, longer bytes\n"


def test_unversioned_legacy_and_links_folders(tmp_path):
    data_root = tmp_path / "data"
    write(data_root / PARSED / "old__creative-synthesis-v2__sonnet-4.txt", b"legacy")
    write(data_root / "3_generation/links_responses/l__pair-explorer__sonnet-4_v1.txt", b"links")
    write(data_root / "3_generation/links_prompts/l__pair-explorer__sonnet-4_v1.txt", b"p", 4000)
    cfg, result = run_scan(data_root)
    assert result.counts["draft"]["docs_created"] == 2
    with DocumentsIndex(cfg.db, cfg.docs_root) as idx:
        row = idx.get_latest_by_task("draft", "l__pair-explorer__sonnet-4")
        assert idx.read_text(row, "prompt") == "p" and row["status"] == "ok"
        old = idx.get_latest_by_task("draft", "old__creative-synthesis-v2__sonnet-4")
        assert old["meta_small"]["version"] == 0


def test_unreadable_task_table_falls_back_to_ids(tmp_path):
    data_root = tmp_path / "data"
    (data_root / "2_tasks/draft_generation_tasks.csv").mkdir(parents=True)
    write(data_root / PARSED / "c__creative-synthesis-v2__sonnet-4_v1.txt", b"x")
    cfg, result = run_scan(data_root)
    with DocumentsIndex(cfg.db, cfg.docs_root) as idx:
        row = idx.get_latest_by_task("draft", "c__creative-synthesis-v2__sonnet-4")
    assert (row["template_id"], row["model_id"]) == ("creative-synthesis-v2", "sonnet-4")


def test_missing_folders_are_fine(tmp_path):
    (tmp_path / "empty").mkdir()  # the data root exists; none of its folders do
    cfg, result = run_scan(tmp_path / "empty")
    assert sum(stage_totals(result, "new").values()) == 0


def test_sources_are_never_modified(tree):
    data_root, _ = tree

    def state():
        return {
            str(p): (p.stat().st_mtime_ns, p.stat().st_size, p.stat().st_mode, p.read_bytes())
            for p in data_root.rglob("*")
            if p.is_file() and "docs" not in p.parts and "db" not in p.parts
        }

    before = state()
    run_scan(data_root)
    run_scan(data_root, link=True)
    assert state() == before
    assert legacy_tree is not None


def _task_digests(db: Path) -> Counter:
    con = sqlite3.connect(db)
    try:
        return Counter(r[0] for r in con.execute("SELECT tables_digest FROM tasks"))
    finally:
        con.close()


def test_a_rescan_with_the_same_tables_parses_none_and_a_rewrite_is_still_seen(tree):
    """Every task's facts are stored with the digest of the tables they were planned with:
    a re-scan whose tables have those bytes checks no task (and parses no table), while a
    rewritten row still reaches its task's facts and documents on the next scan."""
    from docwatch.ingest.scan import catch_up
    from docwatch.ingest.tables import TaskTableReader

    data_root, _ = tree
    cfg, _ = run_scan(data_root)
    digest = TaskTableReader(data_root).load().digest
    assert _task_digests(cfg.db) == Counter({digest: sum(_task_digests(cfg.db).values())})

    indexer = Indexer(cfg, "test")
    try:
        catch_up(indexer, lambda report: None)
        assert indexer._tables is None  # nothing to plan and every task checked: no parse
    finally:
        indexer.close()

    table = data_root / "2_tasks" / "draft_generation_tasks.csv"
    lines = table.read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\n").split(",")
    cells = lines[1].rstrip("\n").split(",")
    task_id = cells[header.index("draft_task_id")]
    cells[header.index("generation_model")] = "deepseek_r1_f"
    lines[1] = ",".join(cells) + "\n"
    table.write_text("".join(lines))
    _, result = run_scan(data_root)
    assert result.counts["draft"]["docs_updated"] >= 1
    con = sqlite3.connect(cfg.db)
    try:
        models = {
            r[0]
            for r in con.execute("SELECT model_id FROM documents WHERE task_id = ?", (task_id,))
        }
        stored = con.execute("SELECT model_id FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
    finally:
        con.close()
    assert models == {"deepseek_r1_f"} and stored == ("deepseek_r1_f",)
    new_digest = TaskTableReader(data_root).load().digest
    assert new_digest != digest
    assert set(_task_digests(cfg.db)) == {new_digest}  # every task checked once, then marked


@pytest.mark.parametrize("stale", [-40, 0, 40], ids=["grew-since-stat", "as-stat", "shrank"])
def test_a_small_source_is_read_whole_whatever_its_stat_said(tmp_path, stale):
    """The probe stops reading at a short read (no read of 0 bytes), never before the file's
    end: a file that grew since its stat is read whole, so the size check after the read sees
    the growth and the file waits for the next pass instead of being copied in part."""
    data = os.urandom(100)
    path = tmp_path / "draft_v1.txt"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        digest, content, size = _hash(fd, len(data) + stale)
    finally:
        os.close(fd)
    assert (content, size) == (data, len(data))
    assert digest == hashlib.sha256(data).hexdigest()

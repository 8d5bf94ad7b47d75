"""CLI tests: every command, its --help example, its output and its exit codes."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import make_config, query, snapshot
from docwatch.cli import main
from docwatch.ingest.indexer import Indexer
from docwatch.ingest.scan import missing_document_tasks

COMMANDS = ["scan", "status", "latest", "show", "verify", "rebuild-index"]


def run(*args, env=None):
    runner = CliRunner()
    base = {"DOCWATCH_SETTLE_SECONDS": "0"}
    return runner.invoke(main, [str(a) for a in args], env={**base, **(env or {})})


@pytest.fixture
def indexed(tree):
    data_root, summary = tree
    result = run("scan", "--data-root", data_root, "--run-id", "cli", "--json")
    assert result.exit_code == 0, result.output
    return data_root, summary, json.loads(result.output)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    result = run(command, "--help")
    assert result.exit_code == 0
    assert "Example:" in result.output and "--config" in result.output


def test_scan_json_summary_per_stage(indexed):
    _, summary, out = indexed
    assert out["run_id"] == "cli"
    assert {s: c["docs_created"] for s, c in out["stages"].items()} == summary.attempts
    assert all(set(c) >= {"new", "indexed", "ignored", "error"} for c in out["stages"].values())


def test_scan_human_summary_and_stage_filter(tree):
    data_root, summary = tree
    result = run("scan", "--data-root", data_root, "--stage", "draft")
    assert result.exit_code == 0
    assert "draft" in result.output and "docs+" in result.output
    rows = snapshot(make_config(data_root).db)
    assert {r[2] for r in rows.values()} == {"draft"}


def test_status_counts(indexed):
    data_root, summary, _ = indexed
    out = json.loads(run("status", "--data-root", data_root, "--json").output)
    assert out["documents"] == sum(summary.attempts.values())
    assert out["pending"] == 0 and out["newest"]["doc_id"]
    assert "documents:" in run("status", "--data-root", data_root).output


def test_latest_show_and_fields(indexed):
    data_root, summary, _ = indexed
    task = next(a.task_id for a in summary.expected if a.stage == "draft" and a.status == "ok")
    out = run("latest", "draft", task, "--data-root", data_root, "--json")
    assert out.exit_code == 0, out.output
    row = json.loads(out.output)
    assert row["status"] == "ok" and row["task_id"] == task
    doc_dir = run("latest", "draft", task, "--data-root", data_root, "--field", "doc_dir").output
    assert doc_dir.strip().endswith(row["doc_id"])
    parsed = run("show", row["doc_id"], "--data-root", data_root, "--field", "parsed")
    source = data_root / row["meta_small"]["sources"]["parsed"]
    assert parsed.stdout_bytes == source.read_bytes()
    assert row["doc_id"] in run("show", row["doc_id"], "--data-root", data_root).output


def test_latest_nothing_found_exits_1_with_message(indexed):
    data_root, _, _ = indexed
    result = run("latest", "essay", "no_such_task", "--data-root", data_root)
    assert result.exit_code == 1
    assert "no ok essay document for task 'no_such_task'" in result.output
    result = run("show", "zzzzzzzzzzzzzzzz", "--data-root", data_root)
    assert result.exit_code == 1 and "no document" in result.output


def test_latest_with_failed_status_filter(indexed):
    data_root, summary, _ = indexed
    failed = next(a for a in summary.expected if a.status in ("parse_error", "gen_error"))
    ok_only = run("latest", failed.stage, failed.task_id, "--data-root", data_root)
    with_failed = run(
        "latest",
        failed.stage,
        failed.task_id,
        "--data-root",
        data_root,
        "--status",
        failed.status,
        "--json",
    )
    assert with_failed.exit_code == 0, with_failed.output
    assert json.loads(with_failed.output)["status"] == failed.status
    assert ok_only.exit_code in (0, 1)


def test_verify_exit_codes(indexed):
    data_root, _, _ = indexed
    assert run("verify", "--data-root", data_root).exit_code == 0
    cfg = make_config(data_root)
    victim = next((cfg.docs_root / "draft").iterdir())
    (victim / "raw.txt").write_bytes(b"edited by hand") if (victim / "raw.txt").exists() else None
    (cfg.docs_root / "essay" / "zzzzzzzzzzzzzzzz").mkdir()
    result = run("verify", "--data-root", data_root, "--json")
    assert result.exit_code == 1
    problems = json.loads(result.output)["problems"]
    assert any("orphan" in p["what"] for p in problems)


def test_edited_document_is_reported_then_repaired(indexed):
    data_root, _, _ = indexed
    cfg = make_config(data_root)
    victim = next(d for d in (cfg.docs_root / "draft").iterdir() if (d / "raw.txt").exists())
    original = (victim / "raw.txt").read_bytes()
    (victim / "raw.txt").write_bytes(b"edited by hand")
    (victim / "prompt.txt").unlink(missing_ok=True)
    report = json.loads(run("verify", "--data-root", data_root, "--json").output)
    assert any("checksum differs" in p["what"] for p in report["problems"])
    result = run("verify", "--data-root", data_root, "--repair")
    assert result.exit_code == 0, result.output
    assert (victim / "raw.txt").read_bytes() == original


def test_a_row_and_metadata_agreeing_on_wrong_char_counts_are_reported_then_repaired(indexed):
    """Stale raw_chars/parsed_chars (an update that kept the old counts) show in verify even
    when metadata.json agrees with the row: the counts are checked against the files."""
    data_root, _, _ = indexed
    cfg = make_config(data_root)
    victim = next(d for d in (cfg.docs_root / "draft").iterdir() if (d / "parsed.txt").exists())
    meta_path = victim / "metadata.json"
    meta = json.loads(meta_path.read_text())
    right = meta["row"]["parsed_chars"]
    meta["row"]["parsed_chars"] = right + 7
    meta_path.write_text(json.dumps(meta))
    con = sqlite3.connect(cfg.db)
    with con:
        con.execute(
            "UPDATE documents SET parsed_chars = ? WHERE doc_id = ?", (right + 7, victim.name)
        )
    con.close()

    result = run("verify", "--data-root", data_root, "--json")
    assert result.exit_code == 1
    problems = json.loads(result.output)["problems"]
    assert [p["where"] for p in problems] == [str(victim / "parsed.txt")], problems
    assert f"its row says parsed_chars = {right + 7}" in problems[0]["what"]
    assert run("verify", "--data-root", data_root, "--repair").exit_code == 0
    assert json.loads(meta_path.read_text())["row"]["parsed_chars"] == right
    assert run("verify", "--data-root", data_root).exit_code == 0


def test_a_row_without_its_order_copy_is_reported_then_repaired(indexed):
    """A row whose documents.version (the readers' order) is not its attempt's, as a writer
    from before schema v5 left beside a newer one writes it: verify names it, --repair
    rewrites it, and the readers' latest is right again."""
    data_root, _, _ = indexed
    cfg = make_config(data_root)
    con = sqlite3.connect(cfg.db)
    victim, version = con.execute(
        "SELECT doc_id, version FROM documents WHERE version > 0 AND status = 'ok' LIMIT 1"
    ).fetchone()
    with con:
        con.execute("UPDATE documents SET version = NULL WHERE doc_id = ?", (victim,))
    con.close()

    result = run("verify", "--data-root", data_root, "--json")
    assert result.exit_code == 1
    problems = json.loads(result.output)["problems"]
    assert [p["where"] for p in problems] == [victim], problems
    assert f"its attempt is version {version}" in problems[0]["what"]
    assert run("verify", "--data-root", data_root, "--repair").exit_code == 0
    assert query(cfg.db, "SELECT version FROM documents WHERE doc_id = ?", (victim,)) == [
        (version,)
    ]
    assert run("verify", "--data-root", data_root).exit_code == 0


def test_deleted_document_dir_is_reported_then_repaired_by_scan(indexed):
    data_root, _, _ = indexed
    cfg = make_config(data_root)
    victim = next((cfg.docs_root / "draft").iterdir())
    shutil.rmtree(victim)
    report = json.loads(run("verify", "--data-root", data_root, "--json").output)
    assert any("missing" in p["what"] for p in report["problems"])
    before = snapshot(cfg.db)
    assert run("scan", "--data-root", data_root).exit_code == 0
    assert (victim / "metadata.json").exists()
    assert snapshot(cfg.db) == before
    assert run("verify", "--data-root", data_root).exit_code == 0


def test_corrupt_index_exit_3_then_rebuild_recovers(indexed):
    data_root, _, _ = indexed
    cfg = make_config(data_root)
    before = snapshot(cfg.db)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(str(cfg.db) + suffix):
            os.unlink(str(cfg.db) + suffix)
    cfg.db.write_bytes(b"this is not a database" * 100)
    result = run("scan", "--data-root", data_root)
    assert result.exit_code == 3
    assert "rebuild-index" in result.output and str(cfg.db) in result.output
    assert run("status", "--data-root", data_root).exit_code == 3
    result = run("rebuild-index", "--data-root", data_root, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["moved_aside"]
    assert snapshot(cfg.db) == before


def test_io_threads_setting_reaches_the_scan(tree):
    """``DOCWATCH_IO_THREADS=0``: the scan reads and stages on its own thread (no pool)."""
    from docwatch.ingest import pool

    data_root, summary = tree
    pool.use_io_threads(None)
    pool.use_io_threads(1)  # a pool of another size, made and let go by the setting
    pool._executor()
    try:
        result = run("scan", "--data-root", data_root, env={"DOCWATCH_IO_THREADS": "0"})
        assert result.exit_code == 0, result.output
        assert (pool.IO_THREADS, pool._pool) == (0, None)
    finally:
        pool.use_io_threads(None)
    assert len(snapshot(make_config(data_root).db)) == sum(summary.attempts.values())


def test_bad_config_lists_every_problem_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('pair_window = "ten"\nsettle_seconds = "x"\nbogus = 1\n')
    result = run("status", "--config", bad)
    assert result.exit_code == 2
    for key in ("pair_window", "settle_seconds", "bogus"):
        assert key in result.output


def test_missing_index_is_a_clear_error(tmp_path):
    result = run("status", "--data-root", tmp_path)
    assert result.exit_code == 3 and "run `docwatch scan` first" in result.output


def test_console_script_and_python_m_work(tree):
    data_root, _ = tree
    exe = shutil.which("docwatch") or os.path.join(os.path.dirname(sys.executable), "docwatch")
    for cmd in ([exe], [sys.executable, "-m", "docwatch"]):
        proc = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "docwatch" in proc.stdout


def test_dry_run_flag_writes_nothing(tree):
    data_root, _ = tree
    result = run("scan", "--data-root", data_root, "--dry-run", "--json")
    assert result.exit_code == 0
    assert json.loads(result.output)["dry_run"] is True
    assert not (data_root / "db").exists() and not (data_root / "docs").exists()


@pytest.mark.skipif(not shutil.which("script"), reason="util-linux `script` gives us a real pty")
def test_progress_bar_only_on_a_terminal(tree, tmp_path):
    data_root, _ = tree
    cmd = f"{sys.executable} -m docwatch scan --data-root {data_root}"
    env = {**os.environ, "DOCWATCH_SETTLE_SECONDS": "0"}
    on_tty = subprocess.run(
        ["script", "-qec", cmd, str(tmp_path / "typescript")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert on_tty.returncode == 0 and "scanning" in on_tty.stdout
    piped = subprocess.run(cmd.split(), env=env, capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and "scanning" not in piped.stdout + piped.stderr


def test_deleted_document_dirs_of_every_stage_are_all_rebuilt_by_scan(indexed):
    """The first and last directory (in doc_id order) of every stage: the merge of the
    documents with each stage's names must find every one."""
    data_root, _, _ = indexed
    cfg = make_config(data_root)
    victims = []
    for stage in ("draft", "essay", "evaluation"):
        names = sorted(p for p in (cfg.docs_root / stage).iterdir())
        victims += [names[0], names[-1]]
    for victim in victims:
        shutil.rmtree(victim)
    con = sqlite3.connect(cfg.db)
    sql = "SELECT stage, task_id FROM documents WHERE doc_id = ?"
    want = {con.execute(sql, (v.name,)).fetchone() for v in victims}
    con.close()
    indexer = Indexer(cfg, "test")
    try:
        assert missing_document_tasks(indexer) == want  # those, and no other task
    finally:
        indexer.close()
    before = snapshot(cfg.db)
    assert run("scan", "--data-root", data_root).exit_code == 0
    assert [v for v in victims if not (v / "metadata.json").exists()] == []
    assert snapshot(cfg.db) == before

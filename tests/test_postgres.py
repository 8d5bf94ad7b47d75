"""The PostgreSQL backend on a real server (tests/pgserver.py): several writers at once, a
SELECT-only reader role, rebuild-index, the missing driver, credentials never shown."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import legacy_tree
from conftest import (
    REPO,
    SNAPSHOT_COLUMNS,
    V4_TASK_DOCS,
    assert_tombstones,
    check_batch_lookups,
    docs_tree,
    insert_v4_task,
    query,
    snapshot,
)
from pgserver import database_of
from support import NotifySocket, wait_until

CONFIG = """\
settle_seconds = 0.5
pair_window = 2
reconcile_interval = "1h"
"""


def docwatch(*args: str, env: dict | None = None, timeout: float = 120, **kw):
    cmd = [sys.executable, "-m", "docwatch", *args]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DOCWATCH_", "NOTIFY"))}
    return subprocess.run(
        cmd, cwd=REPO, env=base | (env or {}), capture_output=True, text=True, timeout=timeout, **kw
    )


class Writer:
    """One `docwatch watch` process writing the shared PostgreSQL index as ``instance``."""

    def __init__(self, tmp: Path, data: Path, docs: Path, url: str, instance: str) -> None:
        self.args = ["--data-root", str(data), "--docs-root", str(docs), "--index-url", url]
        self.config = tmp / "docwatch.toml"
        self.config.write_text(CONFIG)
        self.instance = instance
        self.notify = NotifySocket()
        self.log = tmp / f"watch-{instance}.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCWATCH_", "NOTIFY"))}
        env |= {"DOCWATCH_INSTANCE_NAME": self.instance, "NOTIFY_SOCKET": self.notify.path}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "docwatch", "watch", "--config", str(self.config)]
                + self.args,
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        wait_until(
            lambda: self.notify.count("READY=1") >= self.starts or self.proc.poll() is not None,
            90,
            what=f"{self.instance} READY",
        )
        assert self.proc.poll() is None, self.log.read_text()

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(30) == 0, self.log.read_text()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.notify.close()


def caught_up(data: Path, docs: Path, url: str) -> bool:
    """Every settled file is in the index's ledger and nothing is pending."""
    out = docwatch(
        "scan",
        "--dry-run",
        "--json",
        "--data-root",
        str(data),
        "--docs-root",
        str(docs),
        "--index-url",
        url,
    )
    if out.returncode != 0:
        return False
    import json

    stages = json.loads(out.stdout)["stages"].values()
    busy = sum(s["new"] + s["deferred"] for s in stages)
    return busy == 0 and not query(url, "SELECT 1 FROM documents WHERE status = 'pending'")


def assert_every_source_in_one_document(url: str) -> None:
    """Exactly once: each raw and parsed source of the ledger belongs to exactly one visible
    document, and no document was written twice."""
    sources = {
        f"{sha}:{rel}"
        for rel, sha, kind in query(url, "SELECT relpath, sha256, kind FROM sources")
        if kind != "prompt"
    }
    held: dict[str, int] = {}
    for raw, parsed in query(
        url,
        "SELECT a.raw_key, a.parsed_key FROM attempts a JOIN documents d USING (doc_id)"
        " WHERE d.status <> 'superseded'",
    ):
        for key in (raw, parsed):
            if key is not None:
                held[key] = held.get(key, 0) + 1
    assert set(held) == sources
    assert all(n == 1 for n in held.values()), {k: n for k, n in held.items() if n > 1}


def test_two_writers_and_a_kill_9_yield_every_source_once(tmp_path, pg_url):
    data, docs = tmp_path / "data", tmp_path / "docs"
    data.mkdir()
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    a = Writer(tmp_path / "a", data, docs, pg_url, "host-a")
    b = Writer(tmp_path / "b", data, docs, pg_url, "host-b")
    try:
        a.start()
        b.start()
        done, errors = threading.Event(), []

        def pipeline():
            try:
                legacy_tree.run_pipeline(data, combos=4, seed=31, writers=10, raw_write_delay=0.1)
            except BaseException as exc:
                errors.append(exc)
            finally:
                done.set()

        threading.Thread(target=pipeline, daemon=True).start()
        wait_until(
            lambda: len(query(pg_url, "SELECT doc_id FROM documents")) >= 15,
            90,
            interval=0.05,
            what="the burst under way",
        )
        a.proc.kill()  # SIGKILL mid-burst, wherever it is
        assert a.proc.wait(10) == -signal.SIGKILL
        a.start()  # the same instance: it recovers its own staging and intents
        wait_until(done.is_set, 180, what="the pipeline")
        assert not errors, errors
        wait_until(lambda: caught_up(data, docs, pg_url), 120, interval=0.5, what="caught up")
        a.stop()
        b.stop()
    finally:
        a.close()
        b.close()
    assert_every_source_in_one_document(pg_url)
    assert (
        docwatch(
            "verify", "--data-root", str(data), "--docs-root", str(docs), "--index-url", pg_url
        ).returncode
        == 0
    )
    assert_tombstones(pg_url, docs)
    copy = tmp_path / "copy"
    shutil.copytree(data, copy, symlinks=True)
    ref_db, ref_docs = tmp_path / "ref" / "documents.sqlite", tmp_path / "ref" / "docs"
    out = docwatch(
        "scan",
        "--data-root",
        str(copy),
        "--db",
        str(ref_db),
        "--docs-root",
        str(ref_docs),
        env={"DOCWATCH_SETTLE_SECONDS": "0"},
    )
    assert out.returncode == 0, out.stderr
    columns = tuple(c for c in SNAPSHOT_COLUMNS if c != "doc_dir")  # the docs roots differ
    assert snapshot(pg_url, columns) == snapshot(ref_db, columns)
    assert docs_tree(docs) == docs_tree(ref_docs)


def test_a_reader_role_with_select_only_reads_and_cannot_write(tree, tmp_path, pg_server, pg_url):
    data_root, summary = tree
    docs = tmp_path / "docs"
    env = {"DOCWATCH_SETTLE_SECONDS": "0"}
    common = ["--data-root", str(data_root), "--docs-root", str(docs)]
    assert docwatch("scan", *common, "--index-url", pg_url, env=env).returncode == 0
    reader = pg_server.create_reader_role(database_of(pg_url), "docwatch_reader", "r-secret")
    task = next(a.task_id for a in summary.expected if a.stage == "draft" and a.status == "ok")
    latest = docwatch("latest", "draft", task, *common, "--index-url", reader, "--field", "parsed")
    assert latest.returncode == 0 and latest.stdout, latest.stderr
    assert docwatch("status", *common, "--index-url", reader).returncode == 0

    from docwatch import DocumentsIndex

    with DocumentsIndex(reader, docs) as idx:
        row = idx.get_latest_by_task("draft", task)
        assert idx.read_text(row, "parsed") == latest.stdout
    denied = docwatch("scan", *common, "--index-url", reader, env=env)
    assert denied.returncode == 77, denied.stderr
    assert "permission denied" in denied.stderr and "r-secret" not in denied.stderr


def test_rebuild_index_into_postgres_keeps_the_old_tables(tree, tmp_path, pg_url):
    data_root, _ = tree
    common = ["--data-root", str(data_root), "--docs-root", str(tmp_path / "docs")]
    assert (
        docwatch(
            "scan", *common, "--index-url", pg_url, env={"DOCWATCH_SETTLE_SECONDS": "0"}
        ).returncode
        == 0
    )
    before = snapshot(pg_url)
    out = docwatch("rebuild-index", *common, "--index-url", pg_url)
    assert out.returncode == 0, out.stderr
    assert "docwatch_bak_" in out.stdout
    assert snapshot(pg_url) == before
    backups = query(pg_url, "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'docwatch_bak_%'")
    assert len(backups) == 1
    assert docwatch("verify", *common, "--index-url", pg_url).returncode == 0


def test_without_the_driver_a_postgres_url_is_exit_2_naming_the_extra(tmp_path, pg_url):
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from docwatch.cli import main\n"
        f"sys.argv = ['docwatch', 'status', '--index-url', {pg_url!r}]\n"
        "main()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2, out.stderr
    assert "pip install 'docwatch[postgres]'" in out.stderr
    assert pg_url.split(":")[2].split("@")[0] not in out.stderr  # the password


def test_credentials_are_never_shown(tree, tmp_path, pg_url):
    data_root, _ = tree
    password = pg_url.split(":")[2].split("@")[0]
    common = ["--data-root", str(data_root), "--docs-root", str(tmp_path / "docs")]
    out = docwatch(
        "scan",
        *common,
        "--index-url",
        pg_url,
        "--log-level",
        "DEBUG",
        env={"DOCWATCH_SETTLE_SECONDS": "0"},
    )
    assert out.returncode == 0, out.stderr
    assert password not in out.stdout + out.stderr
    wrong = pg_url.replace(password, "not-the-password")
    denied = docwatch("status", *common, "--index-url", wrong)
    assert denied.returncode == 77, denied.stderr
    assert "not-the-password" not in denied.stderr and "***" in denied.stderr
    bad = docwatch("status", "--index-url", f"postgresql://u:{password}@/")
    assert bad.returncode == 2 and password not in bad.stderr


def test_the_dagster_resource_reads_a_postgres_index(tree, tmp_path, pg_server, pg_url):
    """``DocumentsIndex(index_url=..., docs_root=...)`` in the pipeline's venv, as a role that
    may only SELECT."""
    from pipeline_side import PipelineDriver

    data_root, summary = tree
    docs = tmp_path / "docs"
    assert (
        docwatch(
            "scan",
            "--data-root",
            str(data_root),
            "--docs-root",
            str(docs),
            "--index-url",
            pg_url,
            env={"DOCWATCH_SETTLE_SECONDS": "0"},
        ).returncode
        == 0
    )
    reader = pg_server.create_reader_role(database_of(pg_url), "pipeline_reader", "p-secret")
    task = next(a.task_id for a in summary.expected if a.stage == "draft" and a.status == "ok")
    driver = PipelineDriver(tmp_path, tmp_path / "home")
    try:
        answer = driver.ok(
            "resource",
            method="get_latest_by_task",
            args=["draft", task],
            index_url=reader,
            docs_root=str(docs),
        )
        row = answer["result"]
        text = driver.ok(
            "resource",
            method="read_text",
            args=[row, "parsed"],
            index_url=reader,
            docs_root=str(docs),
        )["result"]
    finally:
        driver.close()
    with_sqlite_api = snapshot(pg_url)[row["doc_id"]]
    assert with_sqlite_api[3] == task and text


def test_v4_index_learns_versions_and_readers_agree_before_and_after(tmp_path, pg_url):
    """Schema v5 on PostgreSQL: a reader of a v4 index (its daemon not upgraded yet) and of
    the migrated one give the model's latest; the migration copies each attempt's version."""
    import psycopg
    from docwatch.reader import DocumentsIndex
    from docwatch.store.backend import open_index
    from docwatch.store.postgres import _pg_ddl
    from docwatch.store.schema import MIGRATIONS, statements

    with psycopg.connect(pg_url, autocommit=True) as con:
        for step in range(4):
            for statement in statements(MIGRATIONS[step]):
                con.execute(_pg_ddl(statement))
        con.execute("CREATE TABLE docwatch_schema (version INTEGER NOT NULL)")
        con.execute("INSERT INTO docwatch_schema VALUES (4)")
        insert_v4_task(con.execute, mark="%s")

    def latest() -> tuple[str, str]:
        with DocumentsIndex(pg_url, tmp_path) as idx:
            by_task = idx.get_latest_by_task("draft", "t")
            by_logical = idx.get_latest_by_logical("lk")
        assert "version" not in by_task  # the seed's columns only
        return by_task["doc_id"], by_logical["doc_id"]

    assert latest() == ("d1", "d1")
    open_index(pg_url).close()  # a writer migrates
    with psycopg.connect(pg_url, autocommit=True) as con:
        schema = con.execute("SELECT version FROM docwatch_schema").fetchone()[0]
        versions = dict(con.execute("SELECT doc_id, version FROM documents").fetchall())
    assert schema == 5
    assert versions == {doc_id: version for doc_id, version, _, _ in V4_TASK_DOCS}
    assert latest() == ("d1", "d1")


def test_a_batch_asks_the_ledger_and_the_raw_versions_once_for_all_its_files(pg_url):
    from docwatch.store.backend import open_index

    index = open_index(pg_url)
    try:
        check_batch_lookups(index)
    finally:
        index.close()

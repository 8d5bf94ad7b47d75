"""Shared fixtures: generated legacy trees, configs, and snapshots of an index."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# No per-example deadline: the rules are checked, not their speed (a loaded CI machine runs
# some examples slower than Hypothesis' 200 ms default, which would fail them as flaky).
settings.register_profile("docwatch", deadline=None, print_blob=True)
settings.load_profile("docwatch")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples"))

import legacy_tree  # noqa: E402
from conftest_pg import pg_server, pg_url  # noqa: E402, F401  (fixtures)
from docwatch.config import load_config  # noqa: E402

SNAPSHOT_COLUMNS = (
    "doc_id",
    "logical_key_id",
    "stage",
    "task_id",
    "parent_doc_id",
    "template_id",
    "model_id",
    "prompt_path",
    "parser",
    "status",
    "created_at",
    "doc_dir",
    "raw_chars",
    "parsed_chars",
    "meta_small",
    "lineage_prev_doc_id",
)


@pytest.fixture(params=["sqlite", "postgres"])
def index_url(request) -> str | None:
    """Run a test on both index backends: None (the SQLite file), or a fresh PostgreSQL
    database on the run's real server (tests/conftest_pg.py)."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("pg_url")


def make_config(data_root: Path, **overrides):
    """A Config for a data root, with test-friendly settle time unless overridden."""
    flags = {"data_root": data_root, "settle_seconds": 0, **overrides}
    return load_config(None, {}, flags)


#: One draft task of an index written before schema v5, (doc_id, version, created_at, status):
#: the unversioned file is the newest yet the oldest attempt, _v1 is newer than _v2 by
#: created_at, _v3 is superseded; the model's latest is d1 (by task and by logical key 'lk').
V4_TASK_DOCS = [
    ("d0", 0, "2026-01-09T00:00:00Z", "ok"),
    ("d1", 1, "2026-01-05T00:00:00Z", "ok"),
    ("d2", 2, "2026-01-04T00:00:00Z", "ok"),
    ("d3", 3, "2026-01-08T00:00:00Z", "superseded"),
]


def insert_v4_task(execute, mark: str = "?") -> None:
    """Insert ``V4_TASK_DOCS`` with ``execute(sql, params)`` (``mark``: the driver's
    placeholder), as a v4 writer did: no version beside the row."""
    for doc_id, version, created_at, status in V4_TASK_DOCS:
        execute(
            "INSERT INTO documents (doc_id, logical_key_id, stage, task_id, status, created_at)"
            f" VALUES ({mark}, 'lk', 'draft', 't', {mark}, {mark})",
            (doc_id, status, created_at),
        )
        execute(
            f"INSERT INTO attempts (doc_id, version, created_at_ns) VALUES ({mark}, {mark}, 0)",
            (doc_id, version),
        )


def check_batch_lookups(index) -> None:
    """``ledger_seen`` and ``max_raw_versions`` answer for a whole batch, across chunks of
    the IN list, as the per-file questions would: only the exact (size, mtime) seen last
    is known, and only raw files count toward a task's highest version."""
    from docwatch.core.model import Source

    def source(task: str, kind: str, version: int, size: int = 10) -> Source:
        folder = "draft_responses_raw" if kind == "raw" else "draft_responses"
        relpath = f"3_generation/{folder}/{task}_v{version}.txt"
        return Source("draft", kind, relpath, task, version, 10**18, size, f"{task}{version}")

    many = [f"t{i:03d}" for i in range(450)]  # more than one chunk (in_chunks: 400)
    sources = [source(t, "raw", 1 + i % 3) for i, t in enumerate(many)]
    sources += [source("t000", "raw", 7), source("t000", "parsed", 9), source("p", "parsed", 4)]
    with index.transaction():
        index.put_sources(sources)
    known = index.ledger_seen([s.relpath for s in sources] + ["3_generation/x/none_v1.txt"])
    assert all(known(s.relpath, 10, 10**18) for s in sources)
    assert not known(sources[0].relpath, 11, 10**18)  # another size
    assert not known(sources[0].relpath, 10, 10**18 + 1)  # another mtime
    assert not known("3_generation/x/none_v1.txt", 10, 10**18)
    versions = index.max_raw_versions([("draft", t) for t in many] + [("draft", "p")])
    assert versions[("draft", "t000")] == 7  # the parsed _v9 does not count
    assert versions[("draft", "t449")] == 1 + 449 % 3
    assert len(versions) == 450 and ("draft", "p") not in versions  # no raw file yet


def query(location, sql: str, params=()) -> list[tuple]:
    """Rows of a read-only query on an index: an SQLite file, or a postgresql:// URL."""
    if isinstance(location, str) and location.startswith("postgresql://"):
        from docwatch.store.backend import open_index

        index = open_index(location, readonly=True)
        try:
            return [tuple(r) for r in index.execute(sql, params).fetchall()]
        finally:
            index.close()
    con = sqlite3.connect(f"file:{location}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in con.execute(sql, params).fetchall()]
    finally:
        con.close()


class Rows(dict):
    """doc_id → a row's compared columns (``columns``, in order); two that differ are
    explained by ``rows_differences``: the documents and the columns that differ."""

    def __init__(self, rows, columns) -> None:
        super().__init__(rows)
        self.columns = tuple(columns)


def differences(left: dict, right: dict, what: str, show, explain, limit: int = 8) -> list[str]:
    """Keys on one side only (``show(key, value)``) and keys whose values differ
    (``explain(left, right)``), at most ``limit`` of each, under a one-line summary."""
    only_left = sorted(left.keys() - right.keys())
    only_right = sorted(right.keys() - left.keys())
    differ = sorted(k for k in left.keys() & right.keys() if left[k] != right[k])
    return [
        f"{what} differ: {len(only_left)} only left, {len(only_right)} only right,"
        f" {len(differ)} with other values (of {len(left)} and {len(right)})",
        *(f"only left:  {show(k, left[k])}" for k in only_left[:limit]),
        *(f"only right: {show(k, right[k])}" for k in only_right[:limit]),
        *(f"differ: {k}: {explain(left[k], right[k])}" for k in differ[:limit]),
    ]


def rows_differences(left: Rows, right: Rows) -> list[str]:
    """Documents on one side only, and the columns that differ in the others."""

    def columns(a: tuple, b: tuple) -> str:
        pairs = zip(left.columns, a, b, strict=False)
        return "; ".join(f"{c} {x!r} vs {y!r}" for c, x, y in pairs if x != y)

    return differences(left, right, "rows", lambda k, row: row, columns)


def snapshot(db, columns=SNAPSHOT_COLUMNS) -> Rows:
    """doc_id → the row's comparable columns (run_id excluded: it names who ingested), of
    every visible document (``db``: an SQLite file or a postgresql:// URL).  Superseded
    documents (tombstones a scan of the finished tree never makes) are checked by
    ``assert_tombstones`` instead."""
    rows = query(db, f"SELECT {', '.join(columns)} FROM documents WHERE status <> 'superseded'")
    return Rows(((r[0], r) for r in rows), columns)


class Files(dict):
    """relative path → a file's bytes; two that differ are explained by ``files_differences``
    (paths and sizes), never by printing every essay of both trees."""


def files_differences(left: Files, right: Files) -> list[str]:
    """Paths on one side only, and files whose bytes differ: sizes, sha256, and the first
    differing byte."""

    def named(path: str, data: bytes) -> str:
        return f"{path} ({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:12]})"

    def bytes_apart(a: bytes, b: bytes) -> str:
        at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
        at = min(len(a), len(b)) if at is None else at
        return (
            f"left {len(a)} bytes, right {len(b)}, first at byte {at}:"
            f" {a[at : at + 40]!r} vs {b[at : at + 40]!r}"
        )

    return differences(left, right, "file trees", named, bytes_apart)


def pytest_assertrepr_compare(op, left, right):
    """Two file trees or two snapshots compared: say what differs in a few lines (a CI log
    keeps only its tail, and the failing test's name must be in it)."""
    if op == "==" and isinstance(left, Files) and isinstance(right, Files):
        return files_differences(left, right)
    if op == "==" and isinstance(left, Rows) and isinstance(right, Rows):
        return rows_differences(left, right)
    return None


def docs_tree(docs_root: Path) -> Files:
    """relative path → bytes of every file of the visible documents except metadata.json
    (which has times); staging under .tmp excluded, superseded documents too."""
    out = Files()
    if not docs_root.is_dir():
        return out
    for stage_dir in sorted(p for p in docs_root.iterdir() if p.is_dir() and p.name != ".tmp"):
        for doc_dir in sorted(stage_dir.iterdir()):
            meta = doc_dir / "metadata.json"
            if meta.exists() and json.loads(meta.read_text())["row"]["status"] == "superseded":
                continue
            for path in sorted(doc_dir.rglob("*")):
                if path.is_file() and path.name != "metadata.json":
                    out[str(path.relative_to(docs_root))] = path.read_bytes()
    return out


def assert_tombstones(db, docs_root: Path) -> int:
    """Every superseded document still resolves (row and directory) and names the visible
    document that now holds its parsed file.  Returns how many there are."""
    rows = query(
        db,
        "SELECT d.doc_id, d.stage, d.meta_small, a.parsed_key FROM documents d"
        " JOIN attempts a USING (doc_id) WHERE d.status = 'superseded'",
    )
    holders = {
        r[0]: r[1:]
        for r in query(
            db,
            "SELECT d.doc_id, d.status, a.parsed_key FROM documents d"
            " JOIN attempts a USING (doc_id)",
        )
    }
    for doc_id, stage, meta, parsed_key in rows:
        by = json.loads(meta)["superseded_by"]
        holder = holders.get(by)
        assert holder is not None and holder[0] != "superseded", (doc_id, by)
        assert holder[1] == parsed_key, (doc_id, by)
        assert (docs_root / stage / doc_id / "metadata.json").exists()
    return len(rows)


@pytest.fixture
def tree(tmp_path) -> tuple[Path, legacy_tree.TreeSummary]:
    data_root = tmp_path / "data"
    summary = legacy_tree.build_tree(data_root, combos=3, seed=7)
    return data_root, summary


@pytest.fixture
def copy_tree():
    def copy(src: Path, dst: Path) -> Path:
        shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("db", "docs"))
        return dst

    return copy


def staged_batches(docs_root: Path) -> list[Path]:
    """Batch directories under ``docs/.tmp/<index>/<writer>/`` (leftovers after a crash)."""
    return sorted((docs_root / ".tmp").glob("*/*/*"))

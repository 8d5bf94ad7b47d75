"""Shared fixtures: generated legacy trees, configs, and snapshots of an index."""

from __future__ import annotations

import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples"))

import legacy_tree  # noqa: E402
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


def make_config(data_root: Path, **overrides):
    """A Config for a data root, with test-friendly settle time unless overridden."""
    flags = {"data_root": data_root, "settle_seconds": 0, **overrides}
    return load_config(None, {}, flags)


def snapshot(db: Path, columns=SNAPSHOT_COLUMNS) -> dict[str, tuple]:
    """doc_id → the row's comparable columns (run_id excluded: it names who ingested)."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute(f"SELECT {', '.join(columns)} FROM documents").fetchall()
    finally:
        con.close()
    return {r[0]: r for r in rows}


def docs_tree(docs_root: Path) -> dict[str, bytes]:
    """relative path → bytes of every document file except metadata.json (which has times)."""
    out = {}
    for path in sorted(docs_root.rglob("*")):
        if path.is_file() and path.name != "metadata.json":
            out[str(path.relative_to(docs_root))] = path.read_bytes()
    return out


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

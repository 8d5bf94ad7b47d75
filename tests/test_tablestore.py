"""The task tables kept on disk (``ingest/tablestore.py``) answer as the in-memory ones do."""

from __future__ import annotations

import csv
import gc
import io
import sqlite3
from pathlib import Path

import pytest
from docwatch.core.tasks import TaskTables, parse_table, task_info
from docwatch.ingest import tablestore
from docwatch.ingest.tables import TaskTableReader
from docwatch.ingest.tablestore import DiskBuilder, DiskTable
from hypothesis import given, settings
from hypothesis import strategies as st

CELL = st.text(alphabet='ab ,"\n\u00e9x', max_size=4)
ROWS = st.lists(st.tuples(st.sampled_from(["k1", "k2", "k3", "k 4", "\u00e9"]), CELL, CELL))


def _csv(rows: list[tuple[str, str, str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "a", "b"])
    writer.writerows(rows)
    return out.getvalue()


@settings(max_examples=60, deadline=None)
@given(rows=ROWS, absent=st.sampled_from(["", "k", "k10", "zz"]))
def test_a_table_on_disk_is_the_table_in_memory(rows, absent):
    """Same rows (the last of a repeated key wins), same lookups, same misses."""
    text = _csv(rows)
    in_memory = parse_table(text, "id", columns=("b",))
    on_disk = parse_table(text, "id", columns=("b",), builder=DiskBuilder)
    assert isinstance(on_disk, DiskTable)
    assert on_disk == in_memory and len(on_disk) == len(in_memory)
    assert sorted(on_disk) == sorted(in_memory)
    for key in [*in_memory, absent]:
        assert on_disk.get(key) == in_memory.get(key)
        assert (key in on_disk) == (key in in_memory)
    assert on_disk.get(absent, "-") == in_memory.get(absent, "-")
    with pytest.raises(KeyError):
        on_disk[absent] if absent not in in_memory else on_disk["never"]


def test_the_reader_keeps_task_tables_on_disk_and_facts_are_the_same(tmp_path: Path) -> None:
    """What ``task_info`` says from a loaded (on-disk) table equals what it says from a dict."""
    header = "evaluation_task_id,document_id,stage,evaluation_template,evaluation_model,extra"
    rows = ["v1,e1,essay2p,novelty,sonnet-4,x", "v2,d1,essay1p,clarity,haiku,y"]
    path = tmp_path / "2_tasks/evaluation_tasks.csv"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    loaded = TaskTableReader(tmp_path, retries=0).load()
    assert isinstance(loaded.evaluation_tasks, DiskTable)
    in_memory = TaskTables(evaluation_tasks=dict(loaded.evaluation_tasks.items()))
    for task in ("v1", "v2", "v3"):
        assert task_info(loaded, "evaluation", task) == task_info(in_memory, "evaluation", task)
    assert loaded.evaluation_tasks["v1"]["document_id"] == "e1"
    assert loaded.evaluation_tasks["v1"].get("extra") is None  # columns no rule reads: dropped


def test_a_dropped_table_closes_its_database_at_once() -> None:
    """Re-read tables must not pile up open temporary databases (and their space in /tmp) in
    a long-running daemon: a table no longer referenced is closed at once, without waiting
    for the cycle collector."""
    gc.collect()
    gc.disable()
    try:
        table = parse_table("id,b\nk,1\n", "id", columns=("b",), builder=DiskBuilder)
        assert table["k"]["b"] == "1"
        conn = table._conn
        del table
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            conn.execute("SELECT 1")
    finally:
        gc.enable()


def test_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A scan looks up every task once or more: the remembered rows stay bounded."""
    monkeypatch.setattr(tablestore, "MEMO_ROWS", 8)
    text = "id,b\n" + "".join(f"k{i},{i}\n" for i in range(100))
    table = parse_table(text, "id", columns=("b",), builder=DiskBuilder)
    assert [table[f"k{i}"]["b"] for i in range(100)] == [str(i) for i in range(100)]
    assert table._memo.cache_info().currsize == 8

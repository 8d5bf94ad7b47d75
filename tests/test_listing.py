"""The merges of ``ingest/listing.py`` (ids against a folder's names; a stage's files by task)
and the bounded sort behind them (``ingest/sortedruns.py``)."""

from __future__ import annotations

from collections import Counter

import pytest
from docwatch.core.layout import parse_name
from docwatch.ingest import listing, sortedruns
from docwatch.ingest.listing import not_listed
from hypothesis import example, given, settings
from hypothesis import strategies as st

NAMES = st.sets(st.text(alphabet="abcdef0123", min_size=1, max_size=4), max_size=40)


@given(ids=NAMES, names=NAMES, page=st.integers(min_value=1, max_value=6))
# CI found it: a match that uses up the names read so far must read more before the next id.
@example(ids={"3", "a"}, names={"0", "00", "000", "01", "1", "2", "3", "a"}, page=5)
@settings(max_examples=500)
def test_not_listed_is_the_set_difference_in_order(ids, names, page):
    """Whatever the page size, and whether a page matches a slice of names or not."""
    assert not_listed(sorted(ids), sorted(names), page) == sorted(ids - names)


def test_not_listed_after_a_gap_finds_the_rest_page_by_page():
    """One id missing early, then whole pages that match again, then one missing late."""
    names = [f"d{i:04d}" for i in range(100) if i not in (3, 97)]
    ids = [f"d{i:04d}" for i in range(100)]
    assert not_listed(ids, names, page=10) == ["d0003", "d0097"]
    assert not_listed(names, ids, page=10) == []


@pytest.fixture(scope="module")
def monkeypatch_module():
    """One monkeypatch for every Hypothesis example of a test (a function-scoped fixture is
    not reset between examples)."""
    with pytest.MonkeyPatch.context() as mp:
        yield mp


TEXT = st.text(alphabet=list("ab_v1.-\u00e9\n") + ["\udcff"], min_size=1, max_size=6)
NAME = st.one_of(TEXT, TEXT.map(lambda task: f"{task}_v1.txt"))  # a task's file, or noise


@settings(max_examples=200, deadline=None)
@given(
    names=st.lists(NAME, max_size=40),
    run=st.integers(min_value=1, max_value=7),
    block=st.integers(min_value=1, max_value=9),
    by_task=st.booleans(),
)
def test_sorted_names_in_runs_is_sorted(names, run, block, by_task, monkeypatch_module):
    """Whatever the run size (spilled to temporary files or not) and wherever a read of a
    spilled run cuts a name or a character, the order is ``sorted``'s, for any file name
    (undecodable bytes, newlines, two-byte characters) and for the task order."""
    monkeypatch_module.setattr(sortedruns, "RUN_NAMES", run)
    monkeypatch_module.setattr(sortedruns, "READ_BYTES", block)
    key = listing._by_task if by_task else None
    assert list(sortedruns.sorted_names(iter(names), key=key)) == sorted(names, key=key)


@given(ids=NAMES, names=NAMES, page=st.integers(min_value=1, max_value=6))
def test_not_listed_streams_both_sides(ids, names, page):
    """The names may come as a stream (sorted in runs), not a list."""
    assert not_listed(iter(sorted(ids)), iter(sorted(names)), page) == sorted(ids - names)


def test_a_folder_bigger_than_a_run_lists_each_task_together(tmp_path, monkeypatch):
    """Tasks whose ids prefix each other sort differently by name and by task; with runs of
    two names every folder is spilled, and still a stage's files come a task at a time, in
    the order an unspilled listing gives, with the ledger's known files left out."""
    folders = {"essay": {"prompt": ["p"], "raw": ["r"], "parsed": ["d"]}}
    tasks = ["a", "a_b", "a-x", "a_v", "b", "a_b_c"]
    for folder in "prd":
        (tmp_path / folder).mkdir()
        for task in tasks:
            for v in (1, 2):
                (tmp_path / folder / f"{task}_v{v}.txt").write_text(task)
    known = tmp_path / "d" / "a_b_v1.txt"
    st_known = known.stat()

    def ledger(folder):
        return [("a_b_v1.txt", st_known.st_size, st_known.st_mtime_ns)] if folder == "d" else []

    def listed():
        counts = Counter()
        got = [c.relpath for c in listing.listing(tmp_path, folders, ["essay"], ledger, counts)]
        return got, counts

    whole, counts = listed()
    monkeypatch.setattr(sortedruns, "RUN_NAMES", 2)
    in_runs, counts_in_runs = listed()
    assert in_runs == whole and counts == counts_in_runs == Counter({("essay", "indexed"): 1})
    assert "d/a_b_v1.txt" not in whole and len(whole) == 3 * len(tasks) * 2 - 1
    order = [parse_name(r.split("/")[1]).task_id for r in whole]
    assert order == sorted(order)  # each task once, together, in task order

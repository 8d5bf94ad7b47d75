"""The merges of ``ingest/listing.py`` (ids against a folder's names; a stage's files by task)
and the bounded sort behind them (``ingest/sortedruns.py``)."""

from __future__ import annotations

import os
from collections import Counter

import pytest
from docwatch.core.layout import FolderRole, parse_name
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
    runs_of=st.integers(min_value=1, max_value=3),
    block=st.integers(min_value=1, max_value=9),
    by_task=st.booleans(),
)
def test_sorted_names_in_runs_is_sorted(names, run, runs_of, block, by_task, monkeypatch_module):
    """Whatever the run size (spilled to temporary files or not; a multiple of ``RUN_NAMES``
    as the doc ids' check asks) and wherever a read of a spilled run cuts a name or a
    character, the order is ``sorted``'s, for any file name (undecodable bytes, newlines,
    two-byte characters) and for the task order."""
    monkeypatch_module.setattr(sortedruns, "RUN_NAMES", run)
    monkeypatch_module.setattr(sortedruns, "READ_BYTES", block)
    key = listing._by_task if by_task else None
    got = list(sortedruns.sorted_names(iter(names), key=key, runs_of=runs_of))
    assert got == sorted(names, key=key)


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
        return [("d/a_b_v1.txt", st_known.st_size, st_known.st_mtime_ns)] if folder == "d" else []

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


# Each name's ledger versions: its own (size, mtime), one of another size, one of another
# mtime, several, or none; the rows carry as many extra columns as a backend returns
# (PostgreSQL's have more than SQLite's).
FILES = {"a_v1.txt": b"x", "b_v1.txt": b"yy", "c_v1.txt": b"zzz", "d_v1.txt": b"ww"}
VERSION = st.sampled_from(["own", "other size", "other mtime"])


@settings(max_examples=300, deadline=None)
@given(
    versions=st.fixed_dictionaries(
        {name: st.lists(VERSION, max_size=3) for name in [*FILES, "link_v1.txt", "gone_v1.txt"]}
    ),
    extra_columns=st.integers(min_value=0, max_value=4),
)
def test_the_merge_skips_a_name_whose_stat_is_one_of_its_ledger_versions(
    versions, extra_columns, tmp_path_factory
):
    """A known name is skipped (counted as indexed) when its regular file's size and mtime
    are those of any of its ledger rows (keyed by relpath: the folder, then the name),
    whichever version and however many columns a row has; anything else, a symlink with its
    own stat in the ledger and a name that vanished included, is yielded for the probe, in
    name order."""
    folder = tmp_path_factory.mktemp("merge")
    for name, data in FILES.items():
        (folder / name).write_bytes(data)
        os.utime(folder / name, ns=(0, 1_600_000_000_000_000_000 + len(data)))  # in the past
    (folder / "link_v1.txt").symlink_to("a_v1.txt")
    stats = {name: os.lstat(folder / name) for name in [*FILES, "link_v1.txt"]}
    rows, expected = [], []
    for name in sorted(versions):
        st_ = stats.get(name)
        own = (st_.st_size, st_.st_mtime_ns) if st_ else (7, 7)
        for v in versions[name]:
            size, mtime = {
                "own": own,
                "other size": (own[0] + 1, own[1]),
                "other mtime": (own[0], own[1] - 1),
            }[v]
            rows.append((f"s/raw/{name}", size, mtime, *range(extra_columns)))
        if not (name in FILES and "own" in versions[name]):
            expected.append(name)  # unknown, changed, not a regular file, or vanished
    counts: Counter = Counter()
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        role = FolderRole("s", "raw", "s/raw")
        got = list(listing._merge_with_ledger(sorted(versions), role, rows, fd, counts))
    finally:
        os.close(fd)
    assert got == expected
    assert counts[("s", "indexed")] == sum("own" in versions[n] for n in FILES)

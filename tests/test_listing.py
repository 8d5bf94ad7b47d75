"""The pure merges of ``ingest/listing.py``: ids against a folder's names."""

from __future__ import annotations

from docwatch.ingest.listing import not_listed
from hypothesis import given
from hypothesis import strategies as st

NAMES = st.sets(st.text(alphabet="abcdef0123", min_size=1, max_size=4), max_size=40)


@given(ids=NAMES, names=NAMES, page=st.integers(min_value=1, max_value=6))
def test_not_listed_is_the_set_difference_in_order(ids, names, page):
    """Whatever the page size, and whether a page matches a slice of names or not."""
    assert not_listed(sorted(ids), sorted(names), page) == sorted(ids - names)


def test_not_listed_after_a_gap_finds_the_rest_page_by_page():
    """One id missing early, then whole pages that match again, then one missing late."""
    names = [f"d{i:04d}" for i in range(100) if i not in (3, 97)]
    ids = [f"d{i:04d}" for i in range(100)]
    assert not_listed(ids, names, page=10) == ["d0003", "d0097"]
    assert not_listed(names, ids, page=10) == []

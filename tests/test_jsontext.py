"""metadata.json's bytes (core/jsontext.py): orjson's, or json's where orjson is missing or
refuses a value, and the same bytes either way for the values a document holds."""

from __future__ import annotations

import json

import pytest
from docwatch.core import jsontext
from hypothesis import given
from hypothesis import strategies as st

# What metadata.json holds: our own rows and facts (text, 64-bit integers, booleans, null),
# and Dagster metadata values in meta_small (finite floats too, nested).
_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.text(st.characters(exclude_categories=("Cs",)))  # no lone surrogates: not UTF-8
)
_FLOAT = st.floats(allow_nan=False, allow_infinity=False)


def _json_like(leaf):
    return st.recursive(
        leaf,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=20,
    )


def _stdlib(value) -> bytes:
    return jsontext._compact_text_json(value).encode() + b"\n"


def test_orjson_is_installed_with_the_daemon():
    # The speed-up is the daemon's (a dependency); without it the same bytes come from json.
    assert jsontext.orjson is not None


@given(_json_like(_LEAF))
def test_orjson_and_json_write_the_same_bytes(value):
    assert jsontext.metadata_bytes(value) == _stdlib(value)


@given(_json_like(_LEAF | _FLOAT))
def test_the_bytes_read_back_as_the_value(value):
    data = jsontext.metadata_bytes(value)
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert json.loads(data) == value


def test_sorted_keys_at_every_level():
    data = jsontext.metadata_bytes({"b": {"z": 1, "a": [{"y": 2, "x": 3}]}, "a": "é"})
    assert data == '{"a":"é","b":{"a":[{"x":3,"y":2}],"z":1}}\n'.encode()


@pytest.mark.parametrize(
    "value",
    [{"big": 2**70}, {"nested": {"big": -(2**64)}}, {"keys": {1: "one", 2: "two"}}],
    ids=["over-64-bits", "nested-over-64-bits", "integer-keys"],
)
def test_what_orjson_refuses_json_writes(value):
    assert jsontext.metadata_bytes(value) == _stdlib(value)


def test_without_orjson_json_writes_them(monkeypatch):
    value = {"row": {"doc_id": "abc", "meta_small": {"n": 1, "t": "é"}}, "x": None}
    with_orjson = jsontext.metadata_bytes(value)
    monkeypatch.setattr(jsontext, "orjson", None)
    assert jsontext.metadata_bytes(value) == with_orjson


def test_a_lone_surrogate_fails_as_before():
    with pytest.raises(UnicodeEncodeError):
        jsontext.metadata_bytes({"name": "\udcff"})

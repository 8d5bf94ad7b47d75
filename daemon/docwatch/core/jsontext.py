"""Canonical JSON text: keys sorted, so the same value is always the same bytes (metadata.json,
``meta_small``, intents).  ``json.dumps`` with options builds an encoder per call; these are
built once and write the same text."""

from __future__ import annotations

import json

try:
    import orjson
except ImportError:  # the pipeline's venv installs docwatch without its dependencies
    orjson = None

#: ASCII only (non-ASCII escaped): the intents' details.
sorted_json = json.JSONEncoder(sort_keys=True).encode
#: UTF-8 text as it is: ``meta_small``.
sorted_text_json = json.JSONEncoder(sort_keys=True, ensure_ascii=False).encode
#: metadata.json's text without orjson: the same bytes orjson writes for its values.
_compact_text_json = json.JSONEncoder(
    sort_keys=True, ensure_ascii=False, separators=(",", ":")
).encode


def metadata_bytes(value: dict) -> bytes:
    """metadata.json's bytes: compact, keys sorted, UTF-8, one line.  orjson writes them ~15×
    faster than json's C encoder (~20 µs a document in a scan, bench/README.md "Fifteenth
    pass"); what it cannot encode (an integer over 64 bits, a non-string key) goes to json."""
    if orjson is not None:
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE)
        except orjson.JSONEncodeError:
            pass
    return _compact_text_json(value).encode() + b"\n"

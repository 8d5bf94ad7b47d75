"""Canonical JSON text: keys sorted, so the same value is always the same bytes (metadata.json,
``meta_small``, intents).  ``json.dumps`` with options builds an encoder per call; these are
built once and write the same text."""

from __future__ import annotations

import json

#: ASCII only (non-ASCII escaped): the intents' details.
sorted_json = json.JSONEncoder(sort_keys=True).encode
#: UTF-8 text as it is: metadata.json and ``meta_small``.
sorted_text_json = json.JSONEncoder(sort_keys=True, ensure_ascii=False).encode

"""Deterministic short ids (pure): base36 of a SHA-256 over a tuple of strings."""

from __future__ import annotations

import hashlib
from json.encoder import encode_basestring as _json_string

ID_LENGTH = 16
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_PAIR_BASE = 36 * 36
_PAIRS = [_ALPHABET[p % 36] + _ALPHABET[p // 36] for p in range(_PAIR_BASE)]  # low digit first


def hash36(*parts: str | None, length: int = ID_LENGTH) -> str:
    """Base36 digest of the parts (None and '' are distinct), fixed ``length`` characters."""
    # JSON keeps the encoding unambiguous: ("a", "b") and ("a,b",) never collide.  The bytes
    # are json.dumps(parts, ensure_ascii=False, separators=(",", ":")), built without its
    # overhead (ids are computed for every document; they must never change).
    text = "[" + ",".join("null" if p is None else _json_string(p) for p in parts) + "]"
    # Only the low ``length`` base-36 digits are kept, least significant first; two digits
    # per division (a table of 36² pairs) halve the big-integer work.
    number = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest(), "big") % 36**length
    pairs = []
    for _ in range(length // 2):
        number, pair = divmod(number, _PAIR_BASE)
        pairs.append(_PAIRS[pair])
    if length % 2:
        pairs.append(_ALPHABET[number % 36])
    return "".join(pairs)


def doc_id_for(stage: str, task_id: str, relpath: str, sha256: str) -> str:
    """The document id of an attempt, from its primary source's identity."""
    return hash36("doc", stage, task_id, relpath, sha256)


def logical_key_for(stage: str, anchor: str | None, template_id: str, model_id: str) -> str:
    """Seed tuple: (draft, task_id, …), (essay, parent_doc_id, …), (evaluation, target, …).

    An essay or evaluation whose parent is not linked yet uses ``unlinked:<task_id>`` as anchor
    (passed by the caller) so that it still groups with its own attempts until linked.
    """
    return hash36(stage, anchor, template_id, model_id)

"""Deterministic short ids (pure): base36 of a SHA-256 over a tuple of strings."""

from __future__ import annotations

import hashlib
import json

ID_LENGTH = 16
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def hash36(*parts: str | None, length: int = ID_LENGTH) -> str:
    """Base36 digest of the parts (None and '' are distinct), fixed ``length`` characters."""
    # JSON keeps the encoding unambiguous: ("a", "b") and ("a,b",) never collide.
    encoded = json.dumps(parts, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    number = int.from_bytes(hashlib.sha256(encoded).digest(), "big")
    chars = []
    for _ in range(length):
        number, digit = divmod(number, 36)
        chars.append(_ALPHABET[digit])
    return "".join(chars)


def doc_id_for(stage: str, task_id: str, relpath: str, sha256: str) -> str:
    """The document id of an attempt, from its primary source's identity."""
    return hash36("doc", stage, task_id, relpath, sha256)


def logical_key_for(stage: str, anchor: str | None, template_id: str, model_id: str) -> str:
    """Seed tuple: (draft, task_id, …), (essay, parent_doc_id, …), (evaluation, target, …).

    An essay or evaluation whose parent is not linked yet uses ``unlinked:<task_id>`` as anchor
    (passed by the caller) so that it still groups with its own attempts until linked.
    """
    return hash36(stage, anchor, template_id, model_id)

"""SQL text both engines accept, built from column lists: upserts and placeholder lists."""

from __future__ import annotations

import functools
from collections.abc import Sequence


def upsert_sql(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    """``INSERT … ON CONFLICT (key) DO UPDATE`` every other column (both engines)."""
    others = [c for c in columns if c not in key]
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in others)
    )


def marks(values: Sequence[str]) -> str:
    """``?, ?, …``: one placeholder a value, for an ``IN (…)``."""
    return ", ".join("?" * len(values))


def pair_values(pairs: Sequence[tuple]) -> str:
    """The right side of a row-value IN of pairs.  A subquery over ``VALUES``, not a bare
    ``(VALUES …)``: SQLite searches the index for each pair only in this form (the bare one
    scans the whole table, so every batch of a scan got slower as the index grew)."""
    return "(SELECT column1, column2 FROM (VALUES " + ", ".join("(?, ?)" for _ in pairs) + ") AS v)"


@functools.lru_cache(maxsize=256)  # a few statements in a few sizes, asked for each chunk
def values_rows_sql(text: str, rows: int) -> str | None:
    """``text`` (an ``INSERT … VALUES (?, …) …`` of one row) for ``rows`` rows at once, or
    None when ``text`` is not that form.  One statement a chunk of rows, not one a row: each
    row's step hands the GIL over, which costs most when a thread runs beside it."""
    head, sep, rest = text.partition(" VALUES (")
    if not sep or not head.lstrip().upper().startswith("INSERT"):
        return None
    params, close, tail = rest.partition(")")
    if not close or set(params) - set("?, ") or "?" not in params:
        return None
    row = f"({params})"
    return f"{head} VALUES {', '.join([row] * rows)}{tail}"

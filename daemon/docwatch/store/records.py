"""The writers' own records in the index: problems with their paths, the intents of a batch
not finished yet (crash recovery reads them), and state keys.

A mixin for ``Index`` (``store/index.py``), as ``SweepQueries`` is: it only needs the index's
``execute``, ``executemany``, ``execute_in``, ``all`` and ``scalar``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from docwatch.core.clock import now_iso
from docwatch.core.jsontext import sorted_json
from docwatch.store.sqltext import upsert_sql


class WriterRecords:
    """Problems, intents and state, for an ``Index``."""

    execute: Any
    executemany: Any
    execute_in: Any
    all: Any
    scalar: Any

    def put_problems(self, problems: Iterable[tuple[str, str]]) -> None:
        seen = now_iso()
        self.executemany(
            "INSERT INTO problems (relpath, reason, seen_at) VALUES (?, ?, ?)"
            " ON CONFLICT (relpath) DO UPDATE SET reason = excluded.reason,"
            " seen_at = excluded.seen_at",
            [(relpath, reason, seen) for relpath, reason in problems],
        )

    def put_intents(self, writer: str, intents: Iterable[tuple[str, str, str, str, dict]]) -> None:
        """(doc_id, stage, task_id, op, detail) of each document a batch is about to write."""
        self.executemany(
            upsert_sql(
                "intents",
                ("doc_id", "stage", "task_id", "op", "phase", "writer", "detail"),
                ["doc_id"],
            ),
            [
                (doc_id, stage, task_id, op, "staged", writer, sorted_json(detail))
                for doc_id, stage, task_id, op, detail in intents
            ],
        )

    def mark_intents_committed(self, doc_ids: Iterable[str]) -> None:
        self.execute_in("UPDATE intents SET phase = 'committed' WHERE doc_id IN", doc_ids)

    def take_intents(self, writer: str) -> list[dict]:
        rows = self.all(
            "SELECT doc_id, stage, task_id, op, phase, detail FROM intents WHERE writer = ?",
            (writer,),
        )
        for r in rows:
            r["detail"] = json.loads(r["detail"]) if r["detail"] else {}
        return rows

    def clear_intents(self, writer: str, doc_ids: Iterable[str] | None = None) -> None:
        if doc_ids is None:
            self.execute("DELETE FROM intents WHERE writer = ?", (writer,))
        else:
            self.execute_in("DELETE FROM intents WHERE writer = ? AND doc_id IN", doc_ids, [writer])

    def set_state(self, key: str, value: str) -> None:
        self.execute(upsert_sql("state", ("key", "value"), ["key"]), (key, value))

    def set_state_once(self, key: str, value: str) -> str:
        """Set ``key`` unless it is set; return the value that stands (first writer wins)."""
        self.execute(
            "INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
            (key, value),
        )
        return self.get_state(key) or value

    def get_state(self, key: str) -> str | None:
        return self.scalar("SELECT value FROM state WHERE key = ?", (key,))

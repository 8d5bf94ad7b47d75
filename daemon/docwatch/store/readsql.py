"""The readers' statements: a document's row (the seed's columns), and its task's or logical
key's "latest" in the model's order (``core.model.attempt_order``): unversioned first, then
created_at, then version.  From schema v5 on, ``idx_documents_latest(_logical)`` holds the rows
in exactly that order, so the statement is one index seek."""

from __future__ import annotations

from functools import lru_cache

from docwatch.store.schema import DOCUMENT_COLUMNS

#: A reader's row: the seed's columns (not the ones kept for the order).
ROW = ", ".join(f"d.{c}" for c in DOCUMENT_COLUMNS)


def latest_template(source: str, version: str) -> str:
    """A reader's "latest" statement, ``{where}`` and ``{marks}`` still to fill."""
    return (
        f"SELECT {ROW} FROM {source} WHERE {{where}}"
        " AND d.status IN ({marks}) AND d.status <> 'superseded'"
        f" ORDER BY ({version} <> 0) DESC, d.created_at DESC, {version} DESC, d.doc_id DESC"
        " LIMIT 1"
    )


#: One seek in idx_documents_latest(_logical).
LATEST = latest_template("documents d", "d.version")
#: Before schema v5 (a reader of an index its daemon has not migrated yet): the join, a sort.
LATEST_BEFORE_V5 = latest_template("documents d JOIN attempts a USING (doc_id)", "a.version")


@lru_cache(maxsize=64)
def latest_sql(template: str, where: str, marks: str) -> str:
    """A reader's statement, built once per shape (a reader calls it thousands of times)."""
    return template.format(where=where, marks=marks)

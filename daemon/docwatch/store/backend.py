"""Which engine holds the index: SQLite by default, PostgreSQL for an ``index_url``."""

from __future__ import annotations

from pathlib import Path

from docwatch.store.index import Index


def is_url(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def open_index(location: str | Path, *, readonly: bool = False) -> Index:
    """The index at ``location``: an SQLite file path, or a ``postgresql://`` URL."""
    if is_url(location):
        from docwatch.store.postgres import open_postgres

        return open_postgres(str(location), readonly=readonly)
    from docwatch.store.sqlite import open_sqlite

    return open_sqlite(Path(location), readonly=readonly)

"""pytest fixtures for a real PostgreSQL server (tests/pgserver.py): one server for the whole
run, one fresh database per test.

A plain module, not a conftest: tests/conftest.py makes the fixtures visible to every test with

    from conftest_pg import pg_server, pg_url  # noqa: F401

A server that cannot start FAILS every test that needs it (pytest.fail, never a skip), with the
reason, e.g. that the PostgreSQL server binaries are missing and `make test` installs them.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import pytest
from pgserver import PgServer

_db_counter = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The run's PostgreSQL server (started on first use, stopped at the end of the run)."""
    try:
        server = PgServer().start()
    except Exception as e:  # PgServerError, or anything else that stops it starting
        reason = f"{type(e).__name__}: {e}"
    else:
        reason = None
    if reason is not None:  # failed outside the except block: no chained traceback noise
        pytest.fail(f"the test PostgreSQL server could not start: {reason}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """``postgresql://docwatch_writer:PASSWORD@127.0.0.1:PORT/<fresh db>``: a new, empty
    database for this test, owned by the writer role, dropped (WITH FORCE) afterwards.  The
    name is ``t<N>_<test name>``; ``pgserver.database_of(url)`` gives it back."""
    slug = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")
    name = f"t{next(_db_counter):04d}_{slug}"[:63].rstrip("_")
    url = pg_server.create_database(name)
    yield url
    pg_server.drop_database(name)

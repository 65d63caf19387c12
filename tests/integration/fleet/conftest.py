"""One real PostgreSQL 15 for the fleet tests (``enmei.fleet.pgserver``: the daemon kit's cluster, never
the system's instance), started once per session and removed at its end; every test gets a database of
its own, dropped after it."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from enmei.fleet.pgserver import TempPostgres

_names = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[TempPostgres]:
    server = TempPostgres()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def pg_dsn(pg_server: TempPostgres) -> Iterator[str]:
    import psycopg

    pg_server.start()  # a test before may have killed it
    name = f"t{next(_names)}"
    admin = f"postgresql://postgres@127.0.0.1:{pg_server.port}/postgres"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
        c.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{pg_server.port}/{name}"
    finally:
        pg_server.start()
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

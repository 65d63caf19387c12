"""Connections to a PostgreSQL journal and its schema: the one place ``psycopg`` is imported for the box.

The import is lazy (inside ``connect``): the SQLite journal, the config loader and the CLI never need
``psycopg``. Schema (version 1), one database shared by the supervisors of a fleet::

    enmei_meta     (key, value)                        'format' = 1
    enmei_records  (supervisor, seq, wall_ns, mono_ns, kind, unit, body, prev, hash)  PK (supervisor, seq)
    enmei_samples  (supervisor, unit, metric, wall, value)

Each supervisor has its own hash chain (``enmei.box.record``'s encoding, unchanged, so a chain migrated
from SQLite keeps its hashes); ``body`` is kept as TEXT, the exact canonical JSON the hash covers
(``jsonb`` would re-encode it). The fleet's tables (``enmei.fleet``) live in the same database.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from enmei.errors import BoxError

__all__ = ["FORMAT", "SCHEMA", "check_dsn", "connect", "redact"]

FORMAT = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS enmei_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS enmei_records (
    supervisor TEXT NOT NULL,
    seq BIGINT NOT NULL,
    wall_ns BIGINT NOT NULL,
    mono_ns BIGINT NOT NULL,
    kind TEXT NOT NULL,
    unit TEXT NOT NULL,
    body TEXT NOT NULL,
    prev BYTEA NOT NULL,
    hash BYTEA NOT NULL,
    PRIMARY KEY (supervisor, seq)
);
CREATE INDEX IF NOT EXISTS enmei_records_unit ON enmei_records (supervisor, unit, seq);
CREATE INDEX IF NOT EXISTS enmei_records_kind ON enmei_records (supervisor, kind, seq);
CREATE TABLE IF NOT EXISTS enmei_samples (
    supervisor TEXT NOT NULL,
    unit TEXT NOT NULL,
    metric TEXT NOT NULL,
    wall DOUBLE PRECISION NOT NULL,
    value DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS enmei_samples_unit_metric ON enmei_samples (supervisor, unit, metric, wall);
"""


def check_dsn(dsn: str) -> str:
    """``dsn`` if it is a usable ``postgresql://`` URL (scheme, a host or a ``host=`` parameter, a numeric
    port); ``ValueError`` saying what is wrong otherwise. Stdlib only: config loading stays light."""
    try:
        parts = urlsplit(dsn)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a PostgreSQL URL ({exc}): expected postgresql://USER@HOST:PORT/DATABASE") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("a PostgreSQL journal is a postgresql://USER@HOST:PORT/DATABASE URL")
    if not parts.hostname and "host=" not in parts.query:
        raise ValueError("the PostgreSQL URL names no host (postgresql://USER@HOST:PORT/DATABASE)")
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return dsn


def redact(dsn: str) -> str:
    """``dsn`` without its password (for messages, records and the dashboard)."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def connect(dsn: str, *, connect_timeout_s: float = 3.0, statement_timeout_s: float | None = 10.0,
            autocommit: bool = False) -> Any:
    """A ``psycopg.Connection`` to ``dsn``. Raises ``BoxError`` naming the (redacted) DSN if ``psycopg`` is
    missing or the server cannot be reached within ``connect_timeout_s``. ``statement_timeout_s`` bounds
    every statement, so a stalled server turns into an error (and the journal spools) instead of a hang."""
    try:
        import psycopg
    except ImportError as exc:
        raise BoxError("a PostgreSQL journal needs psycopg: pip install 'psycopg[binary]'") from exc
    options = f"-c statement_timeout={int(statement_timeout_s * 1000)}" if statement_timeout_s else ""
    try:
        return psycopg.connect(dsn, connect_timeout=max(1, round(connect_timeout_s)), autocommit=autocommit,
                               options=options, keepalives=1, keepalives_idle=5, keepalives_interval=2,
                               keepalives_count=2)
    except psycopg.Error as exc:
        raise BoxError(f"{redact(dsn)}: cannot connect to the PostgreSQL journal: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def ensure_schema(conn: Any) -> None:
    """Create the tables if missing; ``BoxError`` if the database holds a newer format than this enmei's."""
    with conn.cursor() as cur:
        # Two supervisors creating the schema at once would race on CREATE ... IF NOT EXISTS (a unique
        # violation in pg_type): serialize them on a transaction-scoped advisory lock.
        cur.execute("SELECT pg_advisory_xact_lock(7301955)")
        cur.execute(SCHEMA)
        cur.execute("INSERT INTO enmei_meta VALUES ('format', %s) ON CONFLICT DO NOTHING", (str(FORMAT),))
        cur.execute("SELECT value FROM enmei_meta WHERE key = 'format'")
        row = cur.fetchone()
    conn.commit()
    if row and int(row[0]) > FORMAT:
        raise BoxError(f"journal format {row[0]} in PostgreSQL is newer than this enmei's ({FORMAT})")

"""D-Box on PostgreSQL: one hash chain per supervisor in a shared database, group commit in a writer thread,
and a local spool for when PostgreSQL is down or slow.

Promises (the same interface as ``enmei.box.store.Journal``, ``enmei.box.api.JournalWriter``):

* ``append`` returns at once with the record's seq; records are chained in memory, in order, whatever
  PostgreSQL does. One transaction per batch (group commit).
* **Acknowledged** means ``durable_seq >= seq``, and a record gets there in one of two ways only:
  its transaction COMMITted in PostgreSQL (``synchronous_commit`` as the server has it; the default, on,
  is a flushed WAL), or — while PostgreSQL cannot be reached or a statement runs past its timeout — its
  batch written and fsynced to the local spool (``enmei.box.spool``). Spooled records are moved to
  PostgreSQL, oldest first and before any newer record, by this writer when the server answers again,
  or by the next ``open`` of the same supervisor's chain after a crash. Nothing acknowledged is lost
  while the spool's disk survives; records not yet acknowledged die with the process, as with SQLite.
* While PostgreSQL is away: ``status`` is ``degraded`` with the error, ``on_trouble`` is told once (and
  told ``None`` when writing again), supervision is never blocked, and reconnects are tried with
  backoff (up to ``retry_max_s``). ``spooled`` counts the records in the spool; the spool is bounded
  (``max_spool_bytes``): past it records stay in memory, unacknowledged, counted by ``pending``.
  Samples are not spooled: up to ``max_buffered_samples`` wait in memory, the rest are dropped and
  counted (``dropped_samples``).
* One writer per chain: the writer holds a session advisory lock on the supervisor's name; ``open``
  raises ``BoxError`` if another enmei holds it.
* Every ``anchor_every_s`` with new records, an ``anchor`` record signs the newest record (HMAC with the
  anchor key, when given) and names the newest record of every *other* supervisor's chain: the chains
  cross-link, so a chain rewritten after another one named it no longer matches (``pgread.verify_pg``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from enmei.box.anchor import Anchors
from enmei.box.pgdb import connect, ensure_schema, redact
from enmei.box.record import GENESIS, canonical_json, chain_hash
from enmei.box.spool import Row, Spool
from enmei.errors import BoxError

__all__ = ["PgJournal", "lock_key", "supervisors_on"]

log = logging.getLogger(__name__)

_INSERT = ("INSERT INTO enmei_records (supervisor, seq, wall_ns, mono_ns, kind, unit, body, prev, hash)"
           " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)")
_COPY = "COPY enmei_records (supervisor, seq, wall_ns, mono_ns, kind, unit, body, prev, hash) FROM STDIN"
_INSERT_SAMPLE = "INSERT INTO enmei_samples (supervisor, unit, metric, wall, value) VALUES (%s,%s,%s,%s,%s)"

TroubleFn = Callable[[str | None], None]


def lock_key(supervisor: str) -> int:
    """The advisory-lock key of a supervisor's chain (a stable 63-bit number from its name)."""
    return zlib.crc32(b"enmei.journal:" + supervisor.encode()) | (0x5EB0 << 32)


class PgJournal:
    """The writer of supervisor ``supervisor``'s chain in the PostgreSQL database ``dsn``."""

    def __init__(
        self,
        dsn: str,
        *,
        supervisor: str,
        spool_path: str | Path,
        wall_ns: Callable[[], int] = time.time_ns,
        mono_ns: Callable[[], int] = time.monotonic_ns,
        commit_interval_s: float = 0.005,
        samples_retention_s: float = 86_400.0,
        max_buffered_samples: int = 100_000,
        max_spool_bytes: int = 256 << 20,
        on_trouble: TroubleFn | None = None,
        anchors: Anchors | None = None,
        anchor_every_s: float = 10.0,
        connect_timeout_s: float = 3.0,
        statement_timeout_s: float = 10.0,
        retry_max_s: float = 2.0,
    ) -> None:
        if not supervisor:
            raise BoxError("a PostgreSQL journal needs the supervisor's name ([supervisor] host)")
        self.dsn = dsn
        self.supervisor = supervisor
        self.path = Path(spool_path)  # what is on this host: the spool (the chain itself is in PostgreSQL)
        self.location = f"{redact(dsn)}#{supervisor}"
        self._wall_ns = wall_ns
        self._mono_ns = mono_ns
        self.commit_interval_s = commit_interval_s
        self.samples_retention_s = samples_retention_s
        self.max_buffered_samples = max_buffered_samples
        self.on_trouble = on_trouble
        self.anchors = anchors
        self.anchor_every_s = anchor_every_s
        self.connect_timeout_s = connect_timeout_s
        self.statement_timeout_s = statement_timeout_s
        self.retry_max_s = retry_max_s
        self._spool = Spool(self.path, supervisor, max_bytes=max_spool_bytes)
        self._spooled = 0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._durable = threading.Condition(self._lock)
        self._pending: list[Row] = []
        self._samples: list[tuple[str, str, float, float]] = []
        self._dropped_samples = 0
        self._seq = 0
        self._hash = GENESIS
        self._durable_seq = 0
        self._committed_seq = 0  # in PostgreSQL (durable_seq also counts the spool)
        self._closing = False
        self._error: str | None = None
        self._thread: threading.Thread | None = None
        self._conn: Any = None
        self._retry_at = 0.0
        self._backoff = 0.05
        self._last_anchor = time.monotonic()
        self._anchored_seq = 0
        self._last_prune = 0.0
        self._samples_written = 0.0
        self.samples_every_s = 1.0
        self.commits = 0

    # -- opening and closing -----------------------------------------------------------------------

    def open(self) -> PgJournal:
        """Connect, take the chain's lock, create the schema if needed, move a spool left by an earlier
        writer into PostgreSQL, and start the writer thread.

        With PostgreSQL unreachable and a spool present, the chain continues from the spool's last record
        (degraded from the start); with neither, ``BoxError`` naming the DSN: the chain's end is unknown,
        and guessing it would fork the chain."""
        left = self._spool.read()
        self._spooled = len(left)
        try:
            self._connect(first=True)
        except BoxError as exc:
            if not left:
                raise
            self._seq, self._hash = left[-1][0], left[-1][7]
            self._durable_seq = self._seq
            self._error = str(exc)
            self._retry_at = time.monotonic()
            log.error("journal %s: PostgreSQL unreachable at start; continuing from the spool (record %d): %s",
                      self.location, self._seq, exc)
        self._thread = threading.Thread(target=self._writer, name="enmei-pgbox-writer", daemon=True)
        self._thread.start()
        return self

    def _connect(self, *, first: bool = False) -> None:
        """Connect and lock the chain; then drain the spool and learn the chain's end (first connect) or
        check that it is where this writer left it. Raises ``BoxError``; leaves ``_conn`` None then."""
        conn = connect(self.dsn, connect_timeout_s=self.connect_timeout_s,
                       statement_timeout_s=self.statement_timeout_s)
        try:
            if first:
                ensure_schema(conn)
            with conn.cursor() as cur:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (lock_key(self.supervisor),))
                row = cur.fetchone()
                if not row or not row[0]:
                    raise BoxError(f"{self.location}: another enmei is writing supervisor "
                                   f"{self.supervisor!r}'s chain")
                cur.execute("SELECT seq, hash FROM enmei_records WHERE supervisor = %s ORDER BY seq DESC LIMIT 1",
                            (self.supervisor,))
                last = cur.fetchone()
            conn.commit()
            seq, digest = (int(last[0]), bytes(last[1])) if last else (0, GENESIS)
            seq, digest = self._drain_spool(conn, seq, digest)
            if first:
                self._seq, self._hash = seq, digest
                self._durable_seq = self._committed_seq = seq
            elif seq < self._committed_seq:
                raise BoxError(f"{self.location}: the chain in PostgreSQL ends at record {seq}, before record "
                               f"{self._committed_seq} this writer committed (the database was restored "
                               "from an older copy?)")
            else:
                self._committed_seq = seq
        except BaseException as exc:
            with contextlib.suppress(Exception):
                conn.close()
            if isinstance(exc, BoxError):
                raise
            import psycopg

            if isinstance(exc, psycopg.Error):
                raise BoxError(f"{self.location}: {str(exc).strip().splitlines()[0]}") from exc
            raise
        self._conn = conn

    def _drain_spool(self, conn: Any, seq: int, digest: bytes) -> tuple[int, bytes]:
        """Commit the spool's records after record ``seq`` (hash ``digest``) of the chain in PostgreSQL,
        then remove the spool. A spool that does not continue the chain there is a ``BoxError`` (kept)."""
        rows = [r for r in self._spool.read() if r[0] > seq]
        if not rows:
            self._spool.clear()
            self._spooled = 0
            return seq, digest
        if rows[0][0] != seq + 1 or rows[0][6] != digest:
            raise BoxError(f"{self._spool.path}: the spool starts at record {rows[0][0]}, which does not follow "
                           f"record {seq} of supervisor {self.supervisor!r}'s chain in PostgreSQL; kept as is")
        with conn.cursor() as cur:
            cur.executemany(_INSERT, [(self.supervisor, *r) for r in rows])
        conn.commit()
        log.warning("journal %s: %d spooled records moved to PostgreSQL", self.location, len(rows))
        self._spool.clear()
        self._spooled = 0
        return rows[-1][0], rows[-1][7]

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is pending (to PostgreSQL, else to the spool) within ``timeout_s``, stop the writer,
        release the chain's lock. With anchors, a last anchor record is written first."""
        if self._thread is not None and not self._closing and self._seq > self._anchored_seq:
            self._anchor()
        with self._lock:
            self._closing = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("journal %s: writer did not finish within %.1fs; %d records unwritten",
                          self.location, timeout_s, len(self._pending))
            self._thread = None
        self._drop_conn()

    def __enter__(self) -> PgJournal:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------------------------

    def append(self, kind: str, unit: str | None, body: Mapping[str, Any]) -> int:
        """Chain and queue one record; returns its seq. It is acknowledged once ``durable_seq >= seq``."""
        return self.append_many([(kind, unit, body)])

    def append_many(self, items: Iterable[tuple[str, str | None, Mapping[str, Any]]]) -> int:
        """Append several records under one lock; returns the last seq."""
        rows = [(kind, unit or "", canonical_json(body)) for kind, unit, body in items]
        with self._lock:
            if self._closing:
                raise BoxError(f"{self.location}: journal is closed")
            seq, prev = self._seq, self._hash
            wall, mono = self._wall_ns(), self._mono_ns()
            for kind, unit, text in rows:
                seq += 1
                h = chain_hash(prev, seq, wall, mono, kind, unit, text)
                self._pending.append((seq, wall, mono, kind, unit, text, prev, h))
                prev = h
            self._seq, self._hash = seq, prev
            self._wake.notify()
            return seq

    def add_samples(self, rows: Sequence[tuple[str, str, float, float]]) -> None:
        """Queue samples ``(unit, metric, wall, value)`` (unchained, never spooled, pruned by retention)."""
        with self._lock:
            room = self.max_buffered_samples - len(self._samples)
            if room < len(rows):
                self._dropped_samples += len(rows) - max(room, 0)
                rows = rows[: max(room, 0)]
            self._samples.extend(rows)

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until everything appended so far is acknowledged (in PostgreSQL or the spool)."""
        with self._lock:
            target = self._seq
            return self._durable.wait_for(lambda: self._durable_seq >= target or self._thread is None,
                                          timeout=timeout_s) and self._durable_seq >= target

    async def aflush(self, timeout_s: float | None = None) -> bool:
        """``flush`` without blocking the event loop."""
        with self._lock:
            if self._durable_seq >= self._seq:
                return True
        return await asyncio.to_thread(self.flush, timeout_s)

    # -- state -------------------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def last_hash(self) -> bytes:
        return self._hash

    @property
    def durable_seq(self) -> int:
        return self._durable_seq

    @property
    def committed_seq(self) -> int:
        """The newest record committed in PostgreSQL itself (``durable_seq`` also counts the spool)."""
        return self._committed_seq

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def spooled(self) -> int:
        return self._spooled

    @property
    def dropped_samples(self) -> int:
        return self._dropped_samples

    @property
    def status(self) -> str:
        return "degraded" if self._error else "ok"

    @property
    def error(self) -> str | None:
        return self._error

    # -- the writer thread -------------------------------------------------------------------------

    def _writer(self) -> None:
        while True:
            with self._lock:
                if not self._pending and not self._closing:
                    due = self._samples_written + self.samples_every_s - time.monotonic()
                    wait = due if self._samples else self.samples_every_s
                    if self._spooled and self._conn is None:
                        wait = min(wait, max(0.0, self._retry_at - time.monotonic()))
                    self._wake.wait(timeout=max(0.0, wait))
                if self._closing and not self._pending and not self._samples and not self._spooled:
                    return
                batch, self._pending = self._pending, []
                samples: list[tuple[str, str, float, float]] = []
                if self._samples and (batch or self._closing or
                                      time.monotonic() >= self._samples_written + self.samples_every_s):
                    samples, self._samples = self._samples, []
                    self._samples_written = time.monotonic()
                closing = self._closing
            if not self._deliver(batch, samples, closing):
                return
            if batch and not closing and self.commit_interval_s > 0:
                time.sleep(self.commit_interval_s)  # let the next batch gather: group commit

    def _deliver(self, batch: list[Row], samples: list[tuple[str, str, float, float]], closing: bool) -> bool:
        """Commit ``batch`` to PostgreSQL, else spool it. False when the writer should stop (closing and
        nothing more can be done)."""
        if self._conn is None and time.monotonic() >= self._retry_at:
            try:
                self._connect()
            except BoxError as exc:
                self._trouble(str(exc))
        if self._conn is not None:
            try:
                self._commit(batch, samples)
            except Exception as exc:  # psycopg.Error, or the socket under it: the server is away
                self._drop_conn()
                self._trouble(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}")
            else:
                self._backoff = 0.05
                if batch:
                    self._acknowledge(batch[-1][0], committed=True)
                    self._maybe_anchor(closing)
                if self._error is not None:
                    with self._lock:
                        self._error = None
                    log.warning("journal %s: writing to PostgreSQL again", self.location)
                    self._tell(None)
                return True
        # PostgreSQL is away: the batch goes to the spool (acknowledged) or back in front (not).
        if batch:
            try:
                self._spool.append(batch)
            except OSError as exc:
                with self._lock:
                    self._pending[:0] = batch
                log.error("journal %s: cannot spool %d records: %s", self.location, len(batch), exc)
                if closing:
                    log.error("journal %s: giving up at close; %d records unwritten", self.location,
                              len(self._pending))
                    return False
                time.sleep(min(self._backoff, 0.5))
            else:
                self._spooled += len(batch)
                self._acknowledge(batch[-1][0], committed=False)
        if samples:
            with self._lock:
                room = self.max_buffered_samples - len(self._samples)
                self._samples[:0] = samples[: max(room, 0)]
                self._dropped_samples += max(0, len(samples) - max(room, 0))
        if closing:
            with self._lock:
                rest = len(self._pending)
            if not rest:
                if self._samples:
                    log.warning("journal %s: %d samples not written at close (PostgreSQL away)",
                                self.location, len(self._samples))
                return False
        return True

    def _trouble(self, error: str) -> None:
        with self._lock:
            first = self._error is None
            self._error = error
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.retry_max_s)
        if first:
            log.error("journal %s: PostgreSQL unavailable, spooling locally: %s", self.location, error)
            self._tell(error)

    def _acknowledge(self, seq: int, *, committed: bool) -> None:
        with self._lock:
            self._durable_seq = max(self._durable_seq, seq)
            if committed:
                self._committed_seq = max(self._committed_seq, seq)
            self._durable.notify_all()

    def _commit(self, batch: list[Row], samples: list[tuple[str, str, float, float]]) -> None:
        conn = self._conn
        assert conn is not None
        if not batch and not samples:
            return
        try:
            with conn.cursor() as cur:
                if batch:
                    # COPY: one stream per batch (about 3x the rows per second of an executemany here)
                    with cur.copy(_COPY) as copy:
                        for r in batch:
                            copy.write_row((self.supervisor, *r))
                if samples:
                    cur.executemany(_INSERT_SAMPLE, [(self.supervisor, *s) for s in samples])
                    now = time.time()
                    if now - self._last_prune > 60.0:
                        cur.execute("DELETE FROM enmei_samples WHERE supervisor = %s AND wall < %s",
                                    (self.supervisor, now - self.samples_retention_s))
                        self._last_prune = now
            conn.commit()
            self.commits += 1
        except BaseException:
            with contextlib.suppress(Exception):
                conn.rollback()
            raise

    def _drop_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    # -- anchors -----------------------------------------------------------------------------------

    def _maybe_anchor(self, closing: bool) -> None:
        if closing or time.monotonic() - self._last_anchor < self.anchor_every_s:
            return
        if self._seq <= self._anchored_seq + 1:
            return
        self._anchor()

    def _anchor(self) -> None:
        """Append an anchor: the newest record's hash (signed with the key, if any) and the newest
        committed record of every other supervisor's chain (the cross-links)."""
        with self._lock:
            seq, digest = self._seq, self._hash
        self._anchored_seq = seq
        self._last_anchor = time.monotonic()
        body: dict[str, Any] = {"upto": seq, "hash": digest.hex(), "peers": self._peers()}
        if self.anchors is not None:
            body["hmac"] = self.anchors.sign(seq, digest)
        with contextlib.suppress(BoxError):  # closed meanwhile
            self.append("anchor", None, body)

    def _peers(self) -> dict[str, dict[str, Any]]:
        if threading.current_thread() is not self._thread:
            # only the writer thread uses its connection; at close the peers are read on a fresh one
            return {} if self._error else self._peers_on_new_conn()
        conn = self._conn
        if conn is None:
            return {}
        try:
            return _peer_heads(conn, self.supervisor)
        except Exception:  # a cross-link is a bonus; the anchor is written without it
            log.debug("journal %s: peers not read", self.location, exc_info=True)
            with contextlib.suppress(Exception):
                conn.rollback()
            return {}

    def _peers_on_new_conn(self) -> dict[str, dict[str, Any]]:
        try:
            conn = connect(self.dsn, connect_timeout_s=self.connect_timeout_s,
                           statement_timeout_s=self.statement_timeout_s)
        except BoxError:
            return {}
        try:
            return _peer_heads(conn, self.supervisor)
        except Exception:
            return {}
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def _tell(self, error: str | None) -> None:
        if self.on_trouble is not None:
            try:
                self.on_trouble(error)
            except Exception:  # a broken callback must not stop the writer
                log.exception("journal on_trouble callback failed")


_SUPERVISORS = (
    # a loose index scan over the primary key: one seek per supervisor, not a scan of every record
    "WITH RECURSIVE s(n) AS (SELECT min(supervisor) FROM enmei_records UNION ALL"
    " SELECT (SELECT min(supervisor) FROM enmei_records WHERE supervisor > s.n) FROM s WHERE s.n IS NOT NULL)"
    " SELECT n FROM s WHERE n IS NOT NULL")


def supervisors_on(cur: Any) -> list[str]:
    """The names of the supervisors with a chain in the database, sorted."""
    cur.execute(_SUPERVISORS)
    return [str(r[0]) for r in cur.fetchall()]


def _peer_heads(conn: Any, me: str) -> dict[str, dict[str, Any]]:
    with conn.cursor() as cur:
        names = [n for n in supervisors_on(cur) if n != me]
        out: dict[str, dict[str, Any]] = {}
        for name in names:
            cur.execute("SELECT seq, hash FROM enmei_records WHERE supervisor = %s ORDER BY seq DESC LIMIT 1",
                        (name,))
            row = cur.fetchone()
            if row:
                out[name] = {"seq": int(row[0]), "hash": bytes(row[1]).hex()}
    conn.commit()
    return out

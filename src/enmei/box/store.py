"""D-Box: the journal on SQLite (WAL), hash-chained, with group commit in a writer thread.

Promises:

* ``append`` returns at once with the record's seq and hash; the record is *acknowledged* (durable:
  committed and fsynced) when ``durable_seq`` reaches its seq; ``flush``/``aflush`` wait for that.
  Only acknowledged records are promised to survive a crash.
* Appends are batched: one transaction per batch (``commit_interval_s``), so thousands of records cost
  one fsync.
* When a commit fails (disk full, I/O error), the batch stays in memory in order, ``status`` turns
  ``degraded`` with the error, ``on_trouble`` is told once, and the writer retries with backoff until
  the disk takes it again; the chain is unchanged by the delay. Nothing is dropped but samples past
  ``max_buffered_samples``.
* Samples for charts go to a separate, unchained table and are pruned past their retention.
* One writer per journal: ``open`` takes an exclusive lock on ``<journal>.lock`` or raises ``BoxError``.
* With anchors, ``open`` continues only the journal the key last signed (``box.continuity.check_start``):
  a cut, rolled back, rewritten or replaced journal raises ``IntegrityError`` and is left as it is.
  A new journal gets a signed head naming record 0 at once, so that from its first record on, a
  missing head is a sign of tampering, not of a crash.
* The journal, its WAL, lock and head are never reached through a symlink nor trusted if another
  user owns them or may write them (``UnsafePathError``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from enmei.box.anchor import Anchors
from enmei.box.continuity import check_start
from enmei.box.db import connect
from enmei.box.record import FORMAT_VERSION, GENESIS, canonical_json, chain_hash
from enmei.errors import BoxError
from enmei.fsafe import UnsafePathError, check_file

__all__ = ["SCHEMA", "Journal", "connect"]

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    wall_ns INTEGER NOT NULL,
    mono_ns INTEGER NOT NULL,
    kind TEXT NOT NULL,
    unit TEXT NOT NULL,
    body TEXT NOT NULL,
    prev BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS records_unit ON records (unit, seq);
CREATE INDEX IF NOT EXISTS records_kind ON records (kind, seq);
CREATE TABLE IF NOT EXISTS samples (
    unit TEXT NOT NULL,
    metric TEXT NOT NULL,
    wall REAL NOT NULL,
    value REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_unit_metric ON samples (unit, metric, wall);
"""

_INSERT = "INSERT INTO records (seq, wall_ns, mono_ns, kind, unit, body, prev, hash) VALUES (?,?,?,?,?,?,?,?)"
_INSERT_SAMPLE = "INSERT INTO samples (unit, metric, wall, value) VALUES (?,?,?,?)"

TroubleFn = Callable[[str | None], None]


class Journal:
    """The writer side of a journal file. Thread-safe ``append``; one instance per file."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        wall_ns: Callable[[], int] = time.time_ns,
        mono_ns: Callable[[], int] = time.monotonic_ns,
        commit_interval_s: float = 0.005,
        samples_retention_s: float = 86_400.0,
        max_buffered_samples: int = 100_000,
        on_trouble: TroubleFn | None = None,
        anchors: Anchors | None = None,
        anchor_every_s: float = 10.0,
        head_every_s: float = 0.5,
        check_start: bool = True,
    ) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self.check_start = check_start
        self._wall_ns = wall_ns
        self._mono_ns = mono_ns
        self.commit_interval_s = commit_interval_s
        self.samples_retention_s = samples_retention_s
        self.max_buffered_samples = max_buffered_samples
        self.on_trouble = on_trouble
        self.anchors = anchors
        self.anchor_every_s = anchor_every_s
        self.head_every_s = head_every_s
        self._last_anchor = time.monotonic()
        self._anchored_seq = 0
        self._last_head = 0.0
        self._head_seq = 0  # the seq the head file names
        self._head_hash = GENESIS
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._durable = threading.Condition(self._lock)
        self._pending: list[tuple[Any, ...]] = []
        self._samples: list[tuple[str, str, float, float]] = []
        self._dropped_samples = 0
        self._seq = 0
        self._hash = GENESIS
        self._durable_seq = 0
        self._durable_hash = GENESIS
        self._closing = False
        self._error: str | None = None
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._lockfile: int | None = None
        self._last_prune = 0.0
        self._samples_written = 0.0
        self.samples_every_s = 1.0

    # -- opening and closing -----------------------------------------------------------------------

    def open(self) -> Journal:
        """Create or open the journal, take the writer lock, and start the writer thread.

        Raises ``BoxError`` if it is locked or unusable, ``IntegrityError`` (a ``BoxError``) if it is not
        the journal the anchor key last signed (see ``check_start``), ``UnsafePathError`` if a file of it
        is a symlink or another user's; the journal is not changed then."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise BoxError(f"{self.path}: cannot create the journal: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BoxError(f"{self.path}: another enmei is writing this journal") from None
        self._lockfile = fd
        try:
            for suffix in ("", "-wal", "-shm"):
                check_file(Path(f"{self.path}{suffix}"), "journal")
            if self.anchors is not None and self.check_start:
                check_start(self.path, self.anchors)
        except (BoxError, UnsafePathError):
            self._release_lock()
            raise
        try:
            conn = connect(self.path)
            conn.executescript(SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (str(FORMAT_VERSION),))
            row = conn.execute("SELECT value FROM meta WHERE key='format'").fetchone()
            if row and int(row[0]) > FORMAT_VERSION:
                raise BoxError(f"{self.path}: journal format {row[0]} is newer than this enmei ({FORMAT_VERSION})")
            last = conn.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        except sqlite3.DatabaseError as exc:
            self._release_lock()
            raise BoxError(f"{self.path}: not a usable journal: {exc}") from exc
        if last:
            self._seq, self._hash = int(last[0]), bytes(last[1])
        elif self.anchors is not None:
            try:  # a signed "nothing yet": from now on a missing head means tampering, not a crash
                self.anchors.write_head(0, GENESIS)
            except (OSError, UnsafePathError) as exc:
                conn.close()
                self._release_lock()
                raise BoxError(f"{self.anchors.head_path}: cannot write the journal's head file: {exc}") from exc
        self._durable_seq, self._durable_hash = self._seq, self._hash
        self._head_seq, self._head_hash = (self._seq, self._hash) if not last else (0, GENESIS)
        self._conn = conn
        self._thread = threading.Thread(target=self._writer, name="enmei-box-writer", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is pending (waiting up to ``timeout_s``), stop the writer, release the lock.
        With anchors, a last anchor record signs the chain and the head file is written."""
        if self.anchors is not None and self._thread is not None and not self._closing and self._seq:
            self._anchor()
        with self._lock:
            self._closing = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("journal writer did not finish within %.1fs; %d records unwritten",
                          timeout_s, len(self._pending))
            self._thread = None
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lockfile is not None:
            os.close(self._lockfile)
            self._lockfile = None

    def __enter__(self) -> Journal:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------------------------

    def append(self, kind: str, unit: str | None, body: Mapping[str, Any]) -> int:
        """Chain and queue one record; returns its seq. It is durable once ``durable_seq >= seq``."""
        text = canonical_json(body)
        unit = unit or ""
        with self._lock:
            if self._closing:
                raise BoxError(f"{self.path}: journal is closed")
            seq = self._seq + 1
            wall, mono = self._wall_ns(), self._mono_ns()
            h = chain_hash(self._hash, seq, wall, mono, kind, unit, text)
            self._pending.append((seq, wall, mono, kind, unit, text, self._hash, h))
            self._seq, self._hash = seq, h
            if len(self._pending) == 1:
                self._wake.notify()
        return seq

    def append_many(self, items: Iterable[tuple[str, str | None, Mapping[str, Any]]]) -> int:
        """Append several records under one lock; returns the last seq."""
        rows = [(kind, unit or "", canonical_json(body)) for kind, unit, body in items]
        with self._lock:
            if self._closing:
                raise BoxError(f"{self.path}: journal is closed")
            seq, prev = self._seq, self._hash
            wall, mono = self._wall_ns(), self._mono_ns()
            pend = self._pending
            for kind, unit, text in rows:
                seq += 1
                h = chain_hash(prev, seq, wall, mono, kind, unit, text)
                pend.append((seq, wall, mono, kind, unit, text, prev, h))
                prev = h
            self._seq, self._hash = seq, prev
            self._wake.notify()
            return seq

    def add_samples(self, rows: Sequence[tuple[str, str, float, float]]) -> None:
        """Queue samples ``(unit, metric, wall, value)`` for charts (unchained, pruned by retention)."""
        with self._lock:
            room = self.max_buffered_samples - len(self._samples)
            if room < len(rows):
                self._dropped_samples += len(rows) - max(room, 0)
                rows = rows[: max(room, 0)]
            self._samples.extend(rows)
            # No wake-up: samples ride with the next batch of records, or the writer's 1 s timer, so that
            # a steady stream of samples does not cost an fsync each.

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until everything appended so far is durable. False on timeout."""
        with self._lock:
            target = self._seq
            return self._durable.wait_for(lambda: self._durable_seq >= target or self._thread is None,
                                          timeout=timeout_s) and self._durable_seq >= target

    async def aflush(self, timeout_s: float | None = None) -> bool:
        """``flush`` without blocking the event loop; returns False at once if commits are failing."""
        with self._lock:
            target = self._seq
            if self._durable_seq >= target:
                return True
        return await asyncio.to_thread(self._wait_for, target, timeout_s)

    def _wait_for(self, target: int, timeout_s: float | None) -> bool:
        with self._lock:
            self._durable.wait_for(lambda: self._durable_seq >= target or self._error is not None, timeout=timeout_s)
            return self._durable_seq >= target

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
    def pending(self) -> int:
        return len(self._pending)

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
        backoff = 0.05
        while True:
            self._head_if_stale()
            with self._lock:
                if not self._pending and not self._closing:
                    # Only samples (or nothing) waiting: they are written at most once a second.
                    due = self._samples_written + self.samples_every_s - time.monotonic()
                    if not self._samples or due > 0:
                        timeout = due if self._samples else self.samples_every_s
                        if self.anchors is not None and self._head_seq < self._durable_seq:
                            # a head that lags the durable records leaves them unsigned: catch up soon
                            timeout = min(timeout, max(0.0, self._last_head + self.head_every_s - time.monotonic()))
                        self._wake.wait(timeout=timeout)
                        if not self._pending and not self._closing and (
                                not self._samples or time.monotonic() < self._samples_written + self.samples_every_s):
                            continue
                if self._closing and not self._pending and not self._samples:
                    return
                batch, self._pending = self._pending, []
                samples, self._samples = self._samples, []
                closing = self._closing
                if samples:
                    self._samples_written = time.monotonic()
            if not batch and not samples:
                continue
            try:
                self._commit(batch, samples)
            except sqlite3.Error as exc:
                with self._lock:  # put them back in front, in order: the chain is unchanged
                    self._pending[:0] = batch
                    room = self.max_buffered_samples - len(self._samples)
                    self._samples[:0] = samples[: max(room, 0)]
                    self._dropped_samples += max(0, len(samples) - max(room, 0))
                    first_failure = self._error is None
                    self._error = f"{type(exc).__name__}: {exc}"
                    self._durable.notify_all()  # async waiters give up rather than wait out a full disk
                if first_failure:
                    log.error("journal %s: commit failed, buffering in memory: %s", self.path, exc)
                    self._tell(self._error)
                if closing and backoff > 2.0:
                    log.error("journal %s: giving up at close; %d records unwritten", self.path, len(batch))
                    return
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.05
            if batch and self.anchors is not None:
                self._after_commit(batch[-1][0], batch[-1][7], closing)
            with self._lock:
                if batch:
                    self._durable_seq, self._durable_hash = batch[-1][0], batch[-1][7]
                recovered = self._error is not None
                self._error = None
                self._durable.notify_all()
            if recovered:
                log.warning("journal %s: writing again", self.path)
                self._tell(None)
            if not closing and self.commit_interval_s > 0:
                time.sleep(self.commit_interval_s)  # let the next batch gather: group commit

    def _anchor(self) -> None:
        """Append an anchor record signing the hash of the newest record."""
        assert self.anchors is not None
        with self._lock:
            seq, digest = self._seq, self._hash
        self._anchored_seq = seq
        self._last_anchor = time.monotonic()
        self.append("anchor", None, {"upto": seq, "hash": digest.hex(), "hmac": self.anchors.sign(seq, digest)})

    def _after_commit(self, seq: int, digest: bytes, closing: bool) -> None:
        """Anchors after a commit: the head file (at most every ``head_every_s``, and at close) and, every
        ``anchor_every_s`` with new records, an anchor record."""
        assert self.anchors is not None
        now = time.monotonic()
        if closing or now - self._last_head >= self.head_every_s:
            try:
                self.anchors.write_head(seq, digest)
                self._last_head = now
                self._head_seq, self._head_hash = seq, digest
            except (OSError, UnsafePathError) as exc:
                self._last_head = now  # retried when due again, not in a tight loop
                log.error("journal %s: cannot write the head file: %s", self.path, exc)
        if not closing and now - self._last_anchor >= self.anchor_every_s and seq > self._anchored_seq + 1:
            self._anchor()

    def _head_if_stale(self) -> None:
        """Write the head if durable records are past it and it is due (no commit may come for a while)."""
        if self.anchors is None or time.monotonic() - self._last_head < self.head_every_s:
            return
        with self._lock:
            seq, digest = self._durable_seq, self._durable_hash
        if seq > self._head_seq:
            self._after_commit(seq, digest, closing=False)

    def _commit(self, batch: list[tuple[Any, ...]], samples: list[tuple[str, str, float, float]]) -> None:
        conn = self._conn
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
            if batch:
                conn.executemany(_INSERT, batch)
            if samples:
                conn.executemany(_INSERT_SAMPLE, samples)
                now = time.time()
                if now - self._last_prune > 60.0:
                    conn.execute("DELETE FROM samples WHERE wall < ?", (now - self.samples_retention_s,))
                    self._last_prune = now
            conn.execute("COMMIT")
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def _tell(self, error: str | None) -> None:
        if self.on_trouble is not None:
            try:
                self.on_trouble(error)
            except Exception:  # a broken callback must not stop the writer
                log.exception("journal on_trouble callback failed")

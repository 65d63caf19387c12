"""Host leases with fencing tokens, and a leader for fleet actions, in the fleet's PostgreSQL database.

Tables (beside the journal's, ``enmei.box.pgdb``)::

    enmei_hosts    (host, registered_at, last_seen, info)         who is in the fleet
    enmei_leases   (name, holder, token, expires_at)              one row per lease
    enmei_fencing_tokens                                          a sequence: every grant a new, larger token
    enmei_fleet_actions (id, lease, token, holder, action, body, at)   actions taken under a lease

Promises:

* Time is the database's (``clock_timestamp()``): one clock for every host, so a host's clock that
  jumps or drifts cannot make it think a lease is still its own. Each operation is one statement.
* ``acquire`` grants a lease that is free or expired, with a token larger than any granted before
  (a sequence); ``renew`` extends it only for the same holder *and* token, and only while it has not
  expired: a holder that paused past its TTL and came back is refused, never silently renewed.
* ``fenced_action`` writes an action row only if the token is still the lease's current, unexpired
  one — checked by the database in the same statement — so a deposed leader's late action is refused
  (``FencedError``) even if it does not know yet that it was deposed.
* ``Member`` (a thread) registers its host, holds ``host:<name>`` and competes for ``leader``: a leader
  renews every ``ttl_s / 3``; a follower sleeps until the current lease's expiry (as the database
  counts it), then tries at once, so a dead leader is replaced within the TTL plus one round trip. A
  leader that cannot renew steps down on its own clock at ``renewed_at + ttl_s - margin`` (measured from
  *before* the renewal was sent, so it never believes in a lease the database has already expired).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from enmei.box.pgdb import connect
from enmei.errors import BoxError, EnmeiError

__all__ = ["LEADER", "SCHEMA", "FencedError", "Grant", "LeaseStore", "Member"]

log = logging.getLogger(__name__)

LEADER = "leader"

SCHEMA = """
CREATE TABLE IF NOT EXISTS enmei_hosts (
    host TEXT PRIMARY KEY,
    registered_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    last_seen TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    info TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS enmei_leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS enmei_fencing_tokens;
CREATE TABLE IF NOT EXISTS enmei_fleet_actions (
    id BIGSERIAL PRIMARY KEY,
    lease TEXT NOT NULL,
    token BIGINT NOT NULL,
    holder TEXT NOT NULL,
    action TEXT NOT NULL,
    body TEXT NOT NULL,
    at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
"""


class FencedError(EnmeiError):
    """An action under a lease was refused: the token is not the lease's current one (``lease``, ``token``)."""

    def __init__(self, lease: str, token: int) -> None:
        super().__init__(f"lease {lease!r}: token {token} is no longer current (fenced); the action was not taken")
        self.lease = lease
        self.token = token


@dataclass(frozen=True)
class Grant:
    """A lease held: its ``token`` and how long it still runs, as the database counted it."""

    name: str
    holder: str
    token: int
    remaining_s: float


_ACQUIRE = (
    "INSERT INTO enmei_leases AS l (name, holder, token, expires_at)"
    " VALUES (%(name)s, %(holder)s, nextval('enmei_fencing_tokens'), clock_timestamp() + %(ttl)s * interval '1 second')"
    " ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, token = EXCLUDED.token,"
    " expires_at = EXCLUDED.expires_at WHERE l.expires_at < clock_timestamp()"
    " RETURNING token, EXTRACT(EPOCH FROM (expires_at - clock_timestamp()))")
_RENEW = (
    "UPDATE enmei_leases SET expires_at = clock_timestamp() + %(ttl)s * interval '1 second'"
    " WHERE name = %(name)s AND holder = %(holder)s AND token = %(token)s AND expires_at >= clock_timestamp()"
    " RETURNING token, EXTRACT(EPOCH FROM (expires_at - clock_timestamp()))")
_RELEASE = ("UPDATE enmei_leases SET expires_at = clock_timestamp() - interval '1 millisecond'"
            " WHERE name = %(name)s AND holder = %(holder)s AND token = %(token)s")
_CURRENT = ("SELECT holder, token, EXTRACT(EPOCH FROM (expires_at - clock_timestamp())) FROM enmei_leases"
            " WHERE name = %(name)s")
_FENCED_ACTION = (
    "INSERT INTO enmei_fleet_actions (lease, token, holder, action, body)"
    " SELECT %(name)s, %(token)s, %(holder)s, %(action)s, %(body)s WHERE EXISTS (SELECT 1 FROM enmei_leases"
    " WHERE name = %(name)s AND token = %(token)s AND holder = %(holder)s AND expires_at >= clock_timestamp())"
    " RETURNING id")


class LeaseStore:
    """Lease operations on one connection to ``dsn`` (not thread-safe: one per thread). Every method
    raises ``BoxError`` if the database cannot be reached (the caller decides what that means)."""

    def __init__(self, dsn: str, *, connect_timeout_s: float = 2.0, statement_timeout_s: float = 2.0) -> None:
        self.dsn = dsn
        self.connect_timeout_s = connect_timeout_s
        self.statement_timeout_s = statement_timeout_s
        self._conn: Any = None

    def _cur(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.dsn, autocommit=True, connect_timeout_s=self.connect_timeout_s,
                                 statement_timeout_s=self.statement_timeout_s)
        return self._conn.cursor()

    def _run(self, sql: str, args: dict[str, Any]) -> list[tuple[Any, ...]]:
        import psycopg

        try:
            with self._cur() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall()) if cur.description else []
        except psycopg.Error as exc:
            self.close()
            text = str(exc).strip()
            raise BoxError(f"fleet database: {text.splitlines()[0] if text else type(exc).__name__}") from exc

    def ensure_schema(self) -> None:
        with self._cur() as cur, self._conn.transaction():
            cur.execute("SELECT pg_advisory_xact_lock(7301956)")  # two hosts creating it at once
            cur.execute(SCHEMA)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    # -- hosts -------------------------------------------------------------------------------------

    def register(self, host: str, info: dict[str, Any] | None = None) -> None:
        """Add ``host`` to the fleet (or mark it seen again)."""
        self._run("INSERT INTO enmei_hosts (host, info) VALUES (%(host)s, %(info)s) ON CONFLICT (host) DO UPDATE"
                  " SET last_seen = clock_timestamp(), info = EXCLUDED.info",
                  {"host": host, "info": json.dumps(info or {}, sort_keys=True)})

    def hosts(self) -> list[dict[str, Any]]:
        """Every registered host with ``alive`` (its ``host:<name>`` lease unexpired) and its lease token."""
        rows = self._run(
            "SELECT h.host, h.info, l.token, COALESCE(l.expires_at >= clock_timestamp(), false) FROM enmei_hosts h"
            " LEFT JOIN enmei_leases l ON l.name = 'host:' || h.host ORDER BY h.host", {})
        return [{"host": h, "info": json.loads(i), "token": t, "alive": bool(a)} for h, i, t, a in rows]

    # -- leases ------------------------------------------------------------------------------------

    def acquire(self, name: str, holder: str, ttl_s: float) -> Grant | None:
        """The lease if it was free or expired (a new, larger token), else None."""
        rows = self._run(_ACQUIRE, {"name": name, "holder": holder, "ttl": ttl_s})
        return Grant(name, holder, int(rows[0][0]), float(rows[0][1])) if rows else None

    def renew(self, grant: Grant, ttl_s: float) -> Grant | None:
        """The lease extended, if ``grant`` still holds it unexpired; None if it was lost."""
        rows = self._run(_RENEW, {"name": grant.name, "holder": grant.holder, "token": grant.token, "ttl": ttl_s})
        return Grant(grant.name, grant.holder, grant.token, float(rows[0][1])) if rows else None

    def release(self, grant: Grant) -> None:
        """Give the lease up at once (it expires now), if ``grant`` still holds it."""
        self._run(_RELEASE, {"name": grant.name, "holder": grant.holder, "token": grant.token})

    def current(self, name: str) -> tuple[str, int, float] | None:
        """(holder, token, seconds until expiry — negative once expired), or None if never granted."""
        rows = self._run(_CURRENT, {"name": name})
        return (str(rows[0][0]), int(rows[0][1]), float(rows[0][2])) if rows else None

    def fenced_action(self, grant: Grant, action: str, body: dict[str, Any]) -> int:
        """Record ``action`` as taken under ``grant``; the id of its row. ``FencedError`` if the token is
        not the lease's current, unexpired one (checked in the same statement)."""
        rows = self._run(_FENCED_ACTION, {"name": grant.name, "token": grant.token, "holder": grant.holder,
                                          "action": action, "body": json.dumps(body, sort_keys=True)})
        if not rows:
            raise FencedError(grant.name, grant.token)
        return int(rows[0][0])


EventFn = Callable[[str, dict[str, Any]], None]


class Member:
    """This host in the fleet: registers, holds ``host:<host>``, and competes for the leader lease in a
    thread. ``on_event(event, body)`` is told ``leader`` (with the token), ``follower`` (stepped down or
    deposed, with why), ``unreachable`` and ``reachable`` (the database); a failing callback is logged.
    ``is_leader`` and ``token`` are this host's view, always on the safe side of the database's."""

    def __init__(self, dsn: str, host: str, *, ttl_s: float = 5.0, margin_s: float | None = None,
                 on_event: EventFn | None = None, info: dict[str, Any] | None = None,
                 mono: Callable[[], float] = time.monotonic,
                 store: Callable[[], LeaseStore] | None = None) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        self.dsn, self.host, self.ttl_s = dsn, host, ttl_s
        self.margin_s = margin_s if margin_s is not None else min(0.5, ttl_s / 5)
        self.on_event = on_event
        self.info = info or {}
        self._mono = mono
        self._store = store or (lambda: LeaseStore(dsn))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.leader: Grant | None = None
        self._leader_until = 0.0
        self._host_grant: Grant | None = None
        self._reachable = True
        self.terms = 0  # how many times this host became leader

    @property
    def is_leader(self) -> bool:
        return self.leader is not None and self._mono() < self._leader_until

    @property
    def token(self) -> int | None:
        return self.leader.token if self.is_leader and self.leader is not None else None

    def start(self) -> Member:
        self._thread = threading.Thread(target=self._run, name=f"enmei-fleet-{self.host}", daemon=True)
        self._thread.start()
        return self

    def stop(self, *, release: bool = True, timeout_s: float = 5.0) -> None:
        """Stop competing; with ``release``, give the leases up at once (a clean stop hands over without
        waiting out the TTL)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if release:
            store = self._store()
            try:
                for g in (self.leader, self._host_grant):
                    if g is not None:
                        with contextlib.suppress(BoxError):
                            store.release(g)
            finally:
                store.close()
        if self.leader is not None:
            self._emit("follower", {"why": "stopped", "token": self.leader.token})
        self.leader = None

    def _emit(self, event: str, body: dict[str, Any]) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event, body)
        except Exception:
            log.exception("fleet on_event callback failed")

    def _run(self) -> None:
        store = self._store()
        registered = False
        try:
            while not self._stop.is_set():
                wait = self.ttl_s / 3
                try:
                    if not registered:
                        store.ensure_schema()
                        store.register(self.host, self.info)
                        registered = True
                    self._hold_host(store)
                    wait = self._compete(store)
                    if not self._reachable:
                        self._reachable = True
                        self._emit("reachable", {})
                except BoxError as exc:
                    if self._reachable:
                        self._reachable = False
                        self._emit("unreachable", {"error": str(exc)})
                    wait = min(wait, 0.25)
                if self.leader is not None and self._mono() >= self._leader_until:
                    lost, self.leader = self.leader, None
                    self._emit("follower", {"why": "lease not renewed in time", "token": lost.token})
                self._stop.wait(max(0.01, wait))
        finally:
            store.close()

    def _hold_host(self, store: LeaseStore) -> None:
        g = self._host_grant
        g = store.renew(g, self.ttl_s) if g is not None else None
        self._host_grant = g or store.acquire(f"host:{self.host}", self.host, self.ttl_s)

    def _compete(self, store: LeaseStore) -> float:
        """One round: renew (leader) or try to take (follower); the seconds until the next round."""
        sent = self._mono()
        if self.leader is not None:
            g = store.renew(self.leader, self.ttl_s)
            if g is None:
                lost, self.leader = self.leader, None
                self._emit("follower", {"why": "deposed: the lease was taken or had expired", "token": lost.token})
            else:
                self.leader = g
                self._leader_until = sent + min(g.remaining_s, self.ttl_s) - self.margin_s
                return self.ttl_s / 3
        g = store.acquire(LEADER, self.host, self.ttl_s)
        if g is not None:
            self.leader = g
            self._leader_until = sent + min(g.remaining_s, self.ttl_s) - self.margin_s
            self.terms += 1
            self._emit("leader", {"token": g.token, "ttl_s": self.ttl_s})
            return self.ttl_s / 3
        cur = store.current(LEADER)
        if cur is None:
            return 0.05
        # Wake just after the holder's lease runs out as the database counts it (the extra few ms cover
        # the round trip), but look at least every ttl/3 in case it is released early.
        return min(self.ttl_s / 3, max(0.0, cur[2]) + 0.02)

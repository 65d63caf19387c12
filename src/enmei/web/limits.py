"""What a hostile client may cost the supervisor: bounded, whatever it sends or withholds.

The web server runs in the supervisor's event loop, so a client that makes the loop read, buffer or
parse for long delays supervision itself, and a client that holds every connection slot locks the
operator out. Two guards, each with a figure in :class:`WebLimits`:

* :class:`RequestGate` (ASGI middleware), for every HTTP request, *before anything reads its body*:

  - a request that may change something (any method but GET, HEAD and OPTIONS) without
    ``Authorization: Bearer <token>`` is answered 401, with a wrong token 403 — its body is never read;
  - a body declared larger than ``max_body_bytes`` (``Content-Length``) is answered 413 at once; a body of
    unknown length (chunked) is read up to that limit and answered 413 as soon as it passes it; a body
    not complete within ``body_timeout_s`` is answered 408. Every one of these answers closes the
    connection, so the rest of an oversized body is never read;
  - at most ``max_inflight`` requests without the token are handled at once (503 beyond: reads are
    cheap, so this only bites a flood), and requests *with* the token have ``max_inflight_token`` slots
    of their own on top, so an operator's action gets through a flood of reads. Event streams are not
    counted here (the broadcaster has its own limit).

* :func:`guarded_protocol`: uvicorn's HTTP/1.1 protocol with three connection rules, because a
  connection that never sends a request is not a request and no ASGI middleware ever sees it:

  - **header timeout**: a connection that has no request in progress — just opened, or after a
    response — and does not complete a request's headers within ``header_timeout_s`` is closed (a client
    trickling header bytes gains nothing);
  - **per-client cap**: at most ``max_idle_per_client`` connections without a request in progress per
    client address; a new one closes that client's longest-idle one;
  - **connection cap**: at most ``max_connections`` connections in all (file descriptors are shared
    with the units); a new connection closes the longest-idle connection of any client, and is itself
    refused (503) only when every other connection has a request in progress.

  Closing the longest-idle connection, never the newest, is what keeps actions reachable: a real client
  sends its request right after connecting, so it is busy, not idle, by the time anyone is closed.

What these do not do: on loopback, every local user's connections come from 127.0.0.0/8, so the
per-client cap is per address, not per user (a local attacker may use many 127.x addresses); the
connection cap and the header timeout bound such an attacker regardless. Counters of what was refused
and closed are in :class:`GateTally` (``/metrics``: ``enmei_web_refused``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from enmei.web.auth import token_matches

__all__ = ["GateTally", "RequestGate", "WebLimits", "guarded_protocol"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

#: Paths whose requests last as long as the client wants (limited elsewhere), not counted as in flight.
STREAM_PATHS = frozenset({"/api/events"})


@dataclass(frozen=True)
class WebLimits:
    """The figures of the web server's limits (see the module docstring for what each one bounds)."""

    max_body_bytes: int = 64 * 1024
    body_timeout_s: float = 10.0
    header_timeout_s: float = 10.0
    max_connections: int = 128
    max_idle_per_client: int = 16
    max_inflight: int = 48
    max_inflight_token: int = 16

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_connections", "max_idle_per_client", "max_inflight",
                     "max_inflight_token"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"WebLimits.{name} must be at least 1, not {getattr(self, name)!r}")
        for name in ("body_timeout_s", "header_timeout_s"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"WebLimits.{name} must be more than 0 s, not {getattr(self, name)!r}")


@dataclass
class GateTally:
    """How many requests and connections the guards refused or closed, by reason."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", []):
        if k == name:
            return bytes(v)
    return None


def bearer(scope: Scope) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None (no header, another scheme).

    >>> bearer({"headers": [(b"authorization", b"Bearer abc")]}), bearer({"headers": []})
    ('abc', None)
    >>> bearer({"headers": [(b"authorization", b"Basic dXNlcjpwYXNz")]}) is None
    True
    """
    raw = _header(scope, b"authorization")
    if raw is None:
        return None
    scheme, _, cred = raw.decode("latin-1").strip().partition(" ")
    cred = cred.strip()
    return cred if scheme.lower() == "bearer" and cred else None


class RequestGate:
    """Pure ASGI middleware: the token before the body, a body limit, in-flight admission.

    ``token`` and ``token_path`` are the server's token and where it is kept (named in the 401 answer).
    Requests that pass reach ``app`` with their body already read (at most ``max_body_bytes``), so the
    app never waits on a client's upload.
    """

    def __init__(self, app: ASGIApp, *, token: str, token_path: str, limits: WebLimits | None = None,
                 tally: GateTally | None = None) -> None:
        self.app = app
        self.token = token
        self.token_path = token_path
        self.limits = limits or WebLimits()
        self.tally = tally if tally is not None else GateTally()
        self.inflight = 0
        self.inflight_token = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lim = self.limits
        given = bearer(scope)
        has_token = given is not None and token_matches(self.token, given)
        if scope.get("method", "GET") not in SAFE_METHODS:
            if given is None:
                self.tally.add("no_token")
                await reply(send, 401, f"this request changes something and needs the token: send "
                                       f"'Authorization: Bearer <token>' (the token is in {self.token_path})",
                            [(b"www-authenticate", b"Bearer")])
                return
            if not has_token:
                self.tally.add("wrong_token")
                await reply(send, 403, f"wrong token (the token is in {self.token_path})")
                return
        declared = _header(scope, b"content-length")
        chunked = _header(scope, b"transfer-encoding") is not None
        if declared is not None:
            if not declared.strip().isdigit():
                self.tally.add("bad_length")
                await reply(send, 400, f"Content-Length {declared[:40]!r} is not a number of bytes")
                return
            if int(declared) > lim.max_body_bytes:
                self.tally.add("body_too_large")
                await reply(send, 413, f"the body ({int(declared)} bytes) is larger than this server takes "
                                       f"({lim.max_body_bytes} bytes)")
                return
        if chunked or (declared is not None and int(declared) > 0):
            try:
                async with asyncio.timeout(lim.body_timeout_s):
                    body = await read_body(receive, lim.max_body_bytes)
            except TimeoutError:
                self.tally.add("body_timeout")
                await reply(send, 408, f"the body was not complete within {lim.body_timeout_s:g} s")
                return
            if body is None:
                return  # the client went away
            if isinstance(body, int):
                self.tally.add("body_too_large")
                await reply(send, 413, f"the body is larger than this server takes ({lim.max_body_bytes} bytes)")
                return
            receive = replay(body, receive)
        if scope.get("path") in STREAM_PATHS:
            await self.app(scope, receive, send)
            return
        if has_token:
            if self.inflight_token >= lim.max_inflight_token:
                self.tally.add("busy")
                await reply(send, 503, f"{self.inflight_token} requests with the token are being handled "
                                       f"(at most {lim.max_inflight_token}); try again", [(b"retry-after", b"1")])
                return
            self.inflight_token += 1
            try:
                await self.app(scope, receive, send)
            finally:
                self.inflight_token -= 1
            return
        if self.inflight >= lim.max_inflight:
            self.tally.add("busy")
            await reply(send, 503, f"{self.inflight} requests are being handled (at most {lim.max_inflight}); "
                                   "try again", [(b"retry-after", b"1")])
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


async def read_body(receive: Receive, limit: int) -> bytes | int | None:
    """The whole body from ``receive``; the number of bytes read once it passes ``limit`` (reading stops
    there); None if the client disconnected first."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > limit:
            return size
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then whatever ``receive`` gives (a disconnect)."""
    given = False

    async def again() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return again


async def reply(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A JSON ``{"detail": ...}`` answer that closes the connection (nothing more of this request is read)."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


# -- connections -----------------------------------------------------------------------------------

class _Board:
    """Every open connection with the instant it became idle (None: a request is in progress)."""

    def __init__(self, limits: WebLimits, tally: GateTally) -> None:
        self.limits = limits
        self.tally = tally
        self.idle_since: dict[H11Protocol, float | None] = {}
        self.timers: dict[H11Protocol, asyncio.TimerHandle] = {}

    @staticmethod
    def busy(conn: H11Protocol) -> bool:
        cycle = conn.cycle
        return cycle is not None and not cycle.response_complete

    @staticmethod
    def peer(conn: H11Protocol) -> str:
        return conn.client[0] if conn.client else "?"

    def update(self, conn: H11Protocol) -> None:
        if conn not in self.idle_since:
            return
        if self.busy(conn):
            self.idle_since[conn] = None
            timer = self.timers.pop(conn, None)
            if timer is not None:
                timer.cancel()
        elif self.idle_since[conn] is None:
            self.idle_since[conn] = time.monotonic()
            self.timers[conn] = conn.loop.call_later(self.limits.header_timeout_s, self._expire, conn)

    def arrived(self, conn: H11Protocol) -> None:
        self.idle_since[conn] = None
        self.update(conn)
        lim = self.limits
        mine = self._idle(lambda c: c is not conn and self.peer(c) == self.peer(conn))
        if len(mine) >= lim.max_idle_per_client:
            self._close(mine[0], "idle_per_client")
        if len(self.idle_since) > lim.max_connections:
            others = self._idle(lambda c: c is not conn)
            if others:
                self._close(others[0], "connections")
            else:
                self.tally.add("connections")
                self._refuse(conn)

    def left(self, conn: H11Protocol) -> None:
        self.idle_since.pop(conn, None)
        timer = self.timers.pop(conn, None)
        if timer is not None:
            timer.cancel()

    def _idle(self, which: Callable[[H11Protocol], bool]) -> list[H11Protocol]:
        """Idle connections that ``which`` selects, longest idle first."""
        idle = [(since, i, c) for i, (c, since) in enumerate(self.idle_since.items())
                if since is not None and which(c) and not c.transport.is_closing()]
        return [c for _, _, c in sorted(idle, key=lambda x: (x[0], x[1]))]

    def _expire(self, conn: H11Protocol) -> None:
        self.timers.pop(conn, None)
        if conn in self.idle_since and not self.busy(conn):
            self._close(conn, "header_timeout")

    def _close(self, conn: H11Protocol, reason: str) -> None:
        self.tally.add(reason)
        log.debug("closing web connection from %s: %s", self.peer(conn), reason)
        self.left(conn)
        if not conn.transport.is_closing():
            conn.transport.close()

    def _refuse(self, conn: H11Protocol) -> None:
        body = b'{"detail":"every connection slot has a request in progress; try again"}'
        self.left(conn)
        if not conn.transport.is_closing():
            conn.transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                                 b"connection: close\r\nretry-after: 1\r\ncontent-length: "
                                 + str(len(body)).encode() + b"\r\n\r\n" + body)
            conn.transport.close()


def guarded_protocol(limits: WebLimits | None = None, tally: GateTally | None = None) -> type[H11Protocol]:
    """uvicorn's h11 protocol class with the connection rules of the module docstring, for
    ``uvicorn.Config(http=...)``. Each call makes a class with its own board of connections."""
    board = _Board(limits or WebLimits(), tally if tally is not None else GateTally())

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            board.arrived(self)

        def connection_lost(self, exc: Exception | None) -> None:
            board.left(self)
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            board.update(self)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            board.update(self)

    GuardedH11Protocol.board = board  # type: ignore[attr-defined]
    return GuardedH11Protocol

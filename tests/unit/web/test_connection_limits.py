"""The guarded h11 protocol's connection rules, over a transport that only records (no sockets): the
per-client cap and the connection cap close the longest-idle connection and never a busy one, and a
connection without a request in progress is closed after the header timeout."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from enmei.web.limits import GateTally, WebLimits, guarded_protocol


class RecordingTransport(asyncio.Transport):
    """A transport whose I/O edge is a list: what was written, and whether it was closed."""

    def __init__(self, peer: str) -> None:
        super().__init__()
        self.peer = peer
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": (self.peer, 40000), "sockname": ("127.0.0.1", 8470)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await asyncio.Event().wait()  # a request that stays in progress


class Server:
    def __init__(self, **limits: Any) -> None:
        self.tally = GateTally()
        self.cls = guarded_protocol(WebLimits(**limits), self.tally)
        self.config = uvicorn.Config(_app, lifespan="off", ws="none", log_config=None)
        self.config.load()
        self.state = ServerState()
        self.conns: list[tuple[H11Protocol, RecordingTransport]] = []

    def connect(self, peer: str = "127.0.0.1") -> tuple[H11Protocol, RecordingTransport]:
        proto = self.cls(self.config, self.state, {}, asyncio.get_running_loop())
        transport = RecordingTransport(peer)
        proto.connection_made(transport)
        self.conns.append((proto, transport))
        return proto, transport

    def close_all(self) -> None:
        for proto, transport in self.conns:
            transport.closed = True
            proto.connection_lost(None)
        for task in list(self.state.tasks):
            task.cancel()


async def test_the_per_client_cap_closes_that_clients_longest_idle_connection() -> None:
    s = Server(max_idle_per_client=3)
    try:
        first = [s.connect() for _ in range(3)]
        other = s.connect("127.0.0.2")
        assert not any(t.closed for _, t in first)
        s.connect()
        assert [t.closed for _, t in first] == [True, False, False] and not other[1].closed
        assert s.tally.counts == {"idle_per_client": 1}
    finally:
        s.close_all()


async def test_the_connection_cap_spares_busy_connections_and_refuses_only_when_all_are_busy() -> None:
    s = Server(max_connections=3, max_idle_per_client=100)
    try:
        busy, busy_t = s.connect()
        busy.data_received(b"GET /api/units HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # now in progress
        idle = [s.connect() for _ in range(2)]
        s.connect()  # the fourth: the longest idle goes, not the busy one
        assert not busy_t.closed and idle[0][1].closed and not idle[1][1].closed
        for proto, _ in (idle[1], s.conns[-1]):
            proto.data_received(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        _, refused = s.connect()  # every other connection is busy: this one is answered 503 and closed
        assert refused.closed and refused.written.startswith(b"HTTP/1.1 503 ")
        assert s.tally.counts == {"connections": 2}
    finally:
        s.close_all()


async def test_a_connection_without_a_complete_request_is_closed_after_the_header_timeout() -> None:
    s = Server(header_timeout_s=0.05)
    try:
        _, silent = s.connect()
        trickler, trickling = s.connect()
        trickler.data_received(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never complete
        busy, working = s.connect()
        busy.data_received(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        for _ in range(200):
            if silent.closed and trickling.closed:
                break
            await asyncio.sleep(0.05)
        assert silent.closed and trickling.closed and not working.closed
        assert s.tally.counts == {"header_timeout": 2}
    finally:
        s.close_all()

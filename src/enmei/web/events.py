"""Server-sent events: every journal record the engine writes, pushed to the browsers that listen.

The :class:`Broadcaster` is an engine subscriber. The engine calls it synchronously for each record, so
it must never wait: it appends to each client's bounded buffer and sets a flag, nothing else (O(number
of clients)). A client that reads too slowly, or never, fills its buffer; further records for it are
dropped and counted, and when it reads again it first gets a ``lagged`` event telling it to reload what
it shows. So a stuck browser costs a bounded amount of memory and never delays supervision.

Wire format (``text/event-stream``)::

    retry: 2000
    event: hello          data: {"last_seq": N}
    id: SEQ
    event: record         data: {"seq", "kind", "unit", "wall", "body"}
    event: lagged         data: {"dropped": N}
    : keep-alive          (a comment every ``heartbeat_s`` seconds)

Reconnecting clients get no replay: they reload (the pages do so on ``open``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Any

from enmei.box.record import canonical_json

__all__ = ["Broadcaster", "Client", "TooManyClients"]


class TooManyClients(Exception):
    """Every event-stream slot is taken."""


class Client:
    """One listener: a bounded buffer of records, a wake-up flag and a count of what it missed."""

    def __init__(self, size: int, unit: str | None, kinds: frozenset[str] | None) -> None:
        self.buffer: deque[tuple[int, str, str, float, Mapping[str, Any]]] = deque()
        self.size = size
        self.unit = unit
        self.kinds = kinds
        self.dropped = 0
        self.closed = False
        self.wake = asyncio.Event()

    def offer(self, seq: int, kind: str, unit: str, wall: float, body: Mapping[str, Any]) -> None:
        if (self.unit is not None and unit != self.unit) or (self.kinds is not None and kind not in self.kinds):
            return
        if len(self.buffer) >= self.size:
            self.dropped += 1
        else:
            self.buffer.append((seq, kind, unit, wall, body))
        self.wake.set()

    def close(self) -> None:
        self.closed = True
        self.wake.set()


class Broadcaster:
    """Fans journal records out to at most ``max_clients`` event streams."""

    def __init__(self, *, max_clients: int = 32, buffer: int = 512, heartbeat_s: float = 10.0) -> None:
        self.max_clients = max_clients
        self.buffer = buffer
        self.heartbeat_s = heartbeat_s
        self.clients: set[Client] = set()
        self.closed = False

    def __call__(self, seq: int, kind: str, unit: str, body: Mapping[str, Any]) -> None:
        """The engine subscriber: never blocks, never raises for a client's sake."""
        if not self.clients:
            return
        wall = time.time()
        for c in self.clients:
            c.offer(seq, kind, unit, wall, body)

    def connect(self, *, unit: str | None = None, kinds: frozenset[str] | None = None) -> Client:
        """A new client. Raises ``TooManyClients`` when all slots are taken or the broadcaster is closed."""
        if self.closed or len(self.clients) >= self.max_clients:
            raise TooManyClients(f"{len(self.clients)} event streams are open (at most {self.max_clients})")
        c = Client(self.buffer, unit, kinds)
        self.clients.add(c)
        return c

    def disconnect(self, client: Client) -> None:
        self.clients.discard(client)

    def close(self) -> None:
        """End every stream (the server is stopping)."""
        self.closed = True
        for c in list(self.clients):
            c.close()

    async def stream(self, client: Client, last_seq: int) -> AsyncIterator[bytes]:
        """The event-stream bytes for ``client`` until it or the broadcaster closes."""
        try:
            yield f"retry: 2000\nevent: hello\ndata: {json.dumps({'last_seq': last_seq})}\n\n".encode()
            while not client.closed:
                try:
                    async with asyncio.timeout(self.heartbeat_s):
                        await client.wake.wait()
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                client.wake.clear()
                if client.dropped:
                    dropped, client.dropped = client.dropped, 0
                    client.buffer.clear()  # what is left is stale: the page reloads everything
                    yield f"event: lagged\ndata: {json.dumps({'dropped': dropped})}\n\n".encode()
                    continue
                chunks: list[str] = []
                while client.buffer:
                    seq, kind, unit, wall, body = client.buffer.popleft()
                    data = canonical_json({"seq": seq, "kind": kind, "unit": unit, "wall": wall, "body": body})
                    chunks.append(f"id: {seq}\nevent: record\ndata: {data}\n\n")
                if chunks:
                    yield "".join(chunks).encode()
        finally:
            self.disconnect(client)

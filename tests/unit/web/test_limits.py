"""The request gate alone, as ASGI (no sockets): the token before the body, the body limit, admission."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from enmei.clock import wait_for
from enmei.web.limits import GateTally, RequestGate, WebLimits

TOKEN = "gate-token-0123456789abcdef"


class Inner:
    """The app behind the gate: records the bodies it read; ``hold`` keeps requests in flight."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.hold = asyncio.Event()
        self.hold.set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        self.bodies.append(body)
        await self.hold.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def scope(method: str = "POST", *, token: str | None = TOKEN, length: int | None = None, chunked: bool = False,
          path: str = "/api/units/web/actions/restart") -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    if chunked:
        headers.append((b"transfer-encoding", b"chunked"))
    return {"type": "http", "method": method, "path": path, "headers": headers}


class Client:
    """Feeds ``chunks`` as the body and counts how many the gate asked for."""

    def __init__(self, chunks: list[bytes], *, ends: bool = True) -> None:
        self.chunks = chunks
        self.ends = ends  # False: the last chunk says more is coming, and nothing comes
        self.read = 0
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        if not self.chunks and self.ends:
            return {"type": "http.request", "body": b"", "more_body": False}
        if self.read >= len(self.chunks):
            await asyncio.sleep(3600)  # a client that never sends the rest
        self.read += 1
        more = self.read < len(self.chunks) or not self.ends
        return {"type": "http.request", "body": self.chunks[self.read - 1], "more_body": more}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def detail(self) -> str:
        return str(json.loads(self.sent[1]["body"])["detail"])


def gate(inner: Inner, **limits: Any) -> RequestGate:
    return RequestGate(inner, token=TOKEN, token_path="/state/web.token", limits=WebLimits(**limits),
                       tally=GateTally())


async def test_no_token_or_a_wrong_one_is_answered_without_reading_the_body() -> None:
    inner = Inner()
    g = gate(inner)
    for token, status in ((None, 401), ("wrong-token-0123456789", 403)):
        c = Client([b"x" * 1000] * 5)
        await g(scope(token=token, length=100 << 20), c.receive, c.send)
        assert c.status == status and c.read == 0
        assert (b"connection", b"close") in c.sent[0]["headers"]
    assert "/state/web.token" in c.detail
    assert inner.bodies == [] and g.tally.counts == {"no_token": 1, "wrong_token": 1}


async def test_a_declared_body_over_the_limit_is_413_at_once_and_one_under_it_passes() -> None:
    inner = Inner()
    g = gate(inner, max_body_bytes=1000)
    c = Client([b"x" * 1001])
    await g(scope(length=1001), c.receive, c.send)
    assert c.status == 413 and c.read == 0 and "1000 bytes" in c.detail
    c = Client([b"x" * 600, b"y" * 400])
    await g(scope(length=1000), c.receive, c.send)
    assert c.status == 200 and inner.bodies == [b"x" * 600 + b"y" * 400]


async def test_a_chunked_body_is_read_only_up_to_the_limit() -> None:
    inner = Inner()
    g = gate(inner, max_body_bytes=1000)
    c = Client([b"x" * 400] * 100)
    await g(scope(chunked=True), c.receive, c.send)
    assert c.status == 413 and c.read == 3 and inner.bodies == []


async def test_a_body_that_never_completes_is_408_after_the_body_timeout() -> None:
    g = gate(Inner(), body_timeout_s=0.05)
    c = Client([b"x" * 10], ends=False)  # declared 100, sends 10, then nothing
    await wait_for(g(scope(length=100), c.receive, c.send), 30)
    assert c.status == 408


async def test_a_bad_length_is_400_and_limits_are_checked() -> None:
    g = gate(Inner())
    c = Client([])
    await g(scope(length=None) | {"headers": [(b"content-length", b"12x"), (b"authorization", b"Bearer " +
                                                                             TOKEN.encode())]}, c.receive, c.send)
    assert c.status == 400
    with pytest.raises(ValueError, match="max_body_bytes"):
        WebLimits(max_body_bytes=0)
    with pytest.raises(ValueError, match="header_timeout_s"):
        WebLimits(header_timeout_s=0)


async def test_a_flood_of_reads_is_503_but_the_token_has_slots_of_its_own() -> None:
    inner = Inner()
    inner.hold.clear()
    g = gate(inner, max_inflight=3, max_inflight_token=2)
    reads = [Client([]) for _ in range(3)]
    tasks = [asyncio.create_task(g(scope("GET", token=None), c.receive, c.send)) for c in reads]
    while g.inflight < 3:
        await asyncio.sleep(0)
    late = Client([])
    await g(scope("GET", token=None), late.receive, late.send)
    assert late.status == 503
    stream = Client([])  # the event stream is limited by its broadcaster, not here
    streaming = asyncio.create_task(g(scope("GET", token=None, path="/api/events"), stream.receive, stream.send))
    action = Client([])
    acting = asyncio.create_task(g(scope(), action.receive, action.send))
    while g.inflight_token < 1:
        await asyncio.sleep(0)
    inner.hold.set()
    await asyncio.gather(*tasks, acting, streaming)
    assert action.status == 200 and stream.status == 200 and {c.status for c in reads} == {200}
    assert g.inflight == 0 and g.inflight_token == 0 and g.tally.counts == {"busy": 1}

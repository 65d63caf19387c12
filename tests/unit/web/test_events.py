"""The event-stream broadcaster: never blocks the engine, bounded per client, tells laggards."""

from __future__ import annotations

import json

import pytest

from enmei.clock import wait_for
from enmei.web.events import Broadcaster, TooManyClients


def parse(chunk: bytes) -> list[tuple[str, dict[str, object]]]:
    out = []
    for block in chunk.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            out.append((fields["event"], json.loads(fields["data"])))
    return out


async def test_records_reach_listening_clients_in_order() -> None:
    b = Broadcaster()
    client = b.connect()
    stream = b.stream(client, last_seq=7)
    assert parse(await anext(stream)) == [("hello", {"last_seq": 7})]
    b(8, "verdict", "web", {"kind": "anomaly", "value": float("nan")})
    b(9, "decision", "web", {"action": "restart"})
    events = parse(await anext(stream))
    assert [e for e, _ in events] == ["record", "record"]
    assert events[0][1]["seq"] == 8 and events[0][1]["body"] == {"kind": "anomaly", "value": "NaN"}
    assert events[1][1]["kind"] == "decision"
    b.close()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert not b.clients


async def test_a_client_that_does_not_read_costs_a_bounded_buffer_and_gets_lagged() -> None:
    b = Broadcaster(buffer=10)
    client = b.connect()
    stream = b.stream(client, 0)
    await anext(stream)
    for seq in range(1, 10_001):  # the engine never waits
        b(seq, "samples", "web", {})
    assert len(client.buffer) == 10 and client.dropped == 9_990
    assert parse(await anext(stream)) == [("lagged", {"dropped": 9_990})]
    b(10_001, "verdict", "web", {})
    assert parse(await anext(stream))[0][1]["seq"] == 10_001
    await stream.aclose()
    assert not b.clients


async def test_filters_by_unit_and_kind() -> None:
    b = Broadcaster()
    client = b.connect(unit="web", kinds=frozenset({"verdict"}))
    b(1, "verdict", "db", {})
    b(2, "decision", "web", {})
    b(3, "verdict", "web", {})
    assert [r[0] for r in client.buffer] == [3]


async def test_client_slots_are_limited_and_freed() -> None:
    b = Broadcaster(max_clients=2)
    c1, _ = b.connect(), b.connect()
    with pytest.raises(TooManyClients, match="at most 2"):
        b.connect()
    b.disconnect(c1)
    b.connect()
    b.close()
    with pytest.raises(TooManyClients):
        b.connect()


async def test_heartbeat_when_quiet() -> None:
    b = Broadcaster(heartbeat_s=0.01)
    stream = b.stream(b.connect(), 0)
    await anext(stream)
    assert await wait_for(anext(stream), 2) == b": keep-alive\n\n"
    await stream.aclose()

"""sd_notify messages (``enmei.engine.notify``) without a socket: a notifier whose I/O edge records what
it would send. The watchdog pings only while the engine loop makes progress, so a stalled loop stops
pinging and the service manager restarts enmei."""

from __future__ import annotations

import asyncio

import pytest

from enmei.engine.notify import ServiceNotifier, notify_address


class Recording(ServiceNotifier):
    def __init__(self, *, watchdog_s: float | None = 0.5, fail: bool = False) -> None:
        super().__init__("/run/systemd/notify", watchdog_s=watchdog_s)
        self.datagrams: list[bytes] = []
        self.fail = fail

    def _transmit(self, data: bytes) -> None:
        if self.fail:
            raise ConnectionRefusedError("nobody listens")
        self.datagrams.append(data)


def test_addresses() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@abstract/name") == b"\0abstract/name"


def test_messages_say_what_systemd_expects() -> None:
    n = Recording()
    n.ready("supervising 2 units: 2 running")
    n.reloading()
    n.stopping()
    assert n.datagrams[0] == b"READY=1\nSTATUS=supervising 2 units: 2 running"
    fields = n.datagrams[1].decode().split("\n")
    assert fields[0] == "RELOADING=1" and fields[1].startswith("MONOTONIC_USEC=") and int(fields[1][15:]) > 0
    assert n.datagrams[2] == b"STOPPING=1\nSTATUS=stopping the units"


def test_a_failed_send_is_reported_not_raised() -> None:
    n = Recording(fail=True)
    assert n.send("READY=1") is False and n.sent == []


async def test_the_watchdog_pings_only_while_the_loop_makes_progress() -> None:
    n = Recording(watchdog_s=0.25)
    progress = iter([True, True, False, False, True])
    naps: list[float] = []

    async def nap(s: float) -> None:
        naps.append(s)
        if len(naps) > 5:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await n.watchdog(lambda: next(progress), sleep=nap)
    assert naps == [0.25] * 6
    assert n.datagrams == [b"WATCHDOG=1"] * 3  # none for the two turns without progress


async def test_no_watchdog_no_pings() -> None:
    n = Recording(watchdog_s=None)
    await n.watchdog(lambda: True)  # returns at once
    assert n.datagrams == []

"""The fleet membership of a running supervisor (``[fleet]``): a ``Member`` thread beside the engine,
whose every change is journaled as a ``fleet`` record (``leader`` with its fencing token, ``follower``
with why, ``unreachable``/``reachable`` for the fleet database).

Supervision never waits for the fleet: the member's database calls run in its own thread with short
timeouts, and its events reach the engine through the event loop. Cancelled (enmei stopping), it gives
its leases up at once, so a clean stop hands the leadership over without waiting out the TTL; a killed
enmei's leases run out after ``lease_ttl_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING, Any

from enmei.fleet.lease import Member
from enmei.model import RecordKind

if TYPE_CHECKING:
    from enmei.engine.loop import Engine

__all__ = ["serve_fleet"]


async def serve_fleet(engine: Engine) -> None:
    """Run this host's fleet membership until cancelled (no-op without ``[fleet]``)."""
    loaded = engine.loaded
    dsn, fleet = loaded.fleet_dsn, loaded.config.fleet
    if dsn is None or fleet is None:
        return
    loop = asyncio.get_running_loop()
    host = loaded.host_name

    def journal(event: str, body: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):  # the journal closing under us at stop
            engine.record(RecordKind.FLEET, None, {"event": event, "host": host, **body})

    def on_event(event: str, body: dict[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop already closed
            loop.call_soon_threadsafe(journal, event, body)

    member = Member(dsn, host, ttl_s=fleet.lease_ttl_s, on_event=on_event, info={"pid": os.getpid()})
    member.start()
    try:
        await asyncio.Event().wait()
    finally:
        await asyncio.to_thread(member.stop)

"""``enmei.clock.wait_for``: a timeout that never swallows a cancel (Python 3.11's ``asyncio.wait_for`` does,
when the cancel arrives as the awaited thing completes: a loop of such calls then outlives its cancel)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from enmei.clock import wait_for


async def _quick() -> int:
    await asyncio.sleep(0)
    return 1


async def _cancel_races(timeout_fn: Callable[[Awaitable[int], float], Awaitable[Any]], trials: int) -> int:
    """How many of ``trials`` loops of ``timeout_fn(_quick(), 1)`` ran on after a cancel (bounded)."""
    ran_on = 0

    async def loop() -> None:
        nonlocal ran_on
        for _ in range(300):
            await timeout_fn(_quick(), 1.0)
        ran_on += 1

    for trial in range(trials):
        task = asyncio.create_task(loop())
        for _ in range(1 + trial % 4):  # the cancel lands at each point of the inner's life
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return ran_on


async def test_a_cancel_is_never_swallowed() -> None:
    """(With ``asyncio.wait_for`` in its place, on Python 3.11.7 here, 30 of the 40 loops ran on, three times.)"""
    assert await _cancel_races(wait_for, 40) == 0


async def test_a_timeout_cancels_the_awaited_and_raises_timeout_error() -> None:
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError):
        await wait_for(slow(), 0.01)
    assert cancelled.is_set()
    assert await wait_for(_quick(), None) == 1
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        await wait_for(asyncio.shield(fut), 0.01)
    assert not fut.cancelled()  # shielded: it lives on
    fut.set_result(2)
    assert await wait_for(fut, 1.0) == 2

"""Time, injected: the engine owns the only clock; everything else receives it.

Monotonic time is for deadlines and intervals, wall time only for records (a wall clock may jump).

This module is a leaf: it imports nothing from enmei.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import Protocol, TypeVar, runtime_checkable

__all__ = ["Clock", "FakeClock", "SystemClock", "uninterrupted", "wait_for", "within"]

T = TypeVar("T")


@runtime_checkable
class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.time`` and ``asyncio.sleep``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock(SystemClock):
    """A clock that moves only when told to (``advance``); sleepers wake when their time is reached.

    >>> c = FakeClock(start=100.0)
    >>> c.advance(2.5)
    >>> c.monotonic()
    102.5
    """

    def __init__(self, start: float = 1000.0, wall_offset: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_offset
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._now + seconds, fut))
        await fut

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` at once and wake every sleeper whose deadline has come.

        Sleepers due at different instants all see the final time; ``jump`` stops at each deadline instead.
        """
        self._now += seconds
        self._wake()

    def next_deadline(self) -> float | None:
        """The earliest deadline of a sleeper still waiting, or None when nobody sleeps."""
        self._sleepers = [(t, f) for t, f in self._sleepers if not f.done()]  # cancelled sleeps drop out
        return min((t for t, _ in self._sleepers), default=None)

    def jump(self, limit: float) -> float:
        """Move time straight to the next sleeper's deadline, but not past ``limit``; wake who is due.

        Never moves time backwards: with no deadline before ``limit`` (an absolute ``monotonic`` value),
        time becomes ``max(now, limit)``. Returns the new time. No real time passes.

        >>> c = FakeClock(start=0.0)
        >>> c.jump(5.0)
        5.0
        """
        nxt = self.next_deadline()
        self._now = max(self._now, limit if nxt is None else min(nxt, limit))
        self._wake()
        return self._now

    def _wake(self) -> None:
        due = [(t, f) for t, f in self._sleepers if t <= self._now]
        self._sleepers = [(t, f) for t, f in self._sleepers if t > self._now]
        for _, fut in sorted(due, key=lambda p: p[0]):
            if not fut.done():
                fut.set_result(None)


async def within(clock: Clock, aw: Awaitable[T], timeout_s: float) -> T:
    """Await ``aw`` for at most ``timeout_s`` of ``clock`` time; on timeout cancel it, raise ``TimeoutError``.

    Like ``asyncio.wait_for``, but on the injected clock, so a ``FakeClock`` drives deadlines too. Pass
    ``asyncio.shield(fut)`` to keep a future alive past the timeout.
    """
    task = asyncio.ensure_future(aw)
    timer = asyncio.ensure_future(clock.sleep(timeout_s))
    try:
        done, _ = await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        timer.cancel()
        raise
    if task in done:
        timer.cancel()
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise TimeoutError(f"not done within {timeout_s:g}s")


async def uninterrupted(aw: Awaitable[T]) -> T:
    """Await ``aw`` to its end even if the awaiting task is cancelled meanwhile, once or many times (clean-up
    that must not be left half-done, such as ending an instance whose start was given up on); then raise
    the cancellation that came, if one did (``aw``'s own exception instead, if it raised one).

    Bounded only by ``aw`` itself: give it its own deadline.
    """
    task = asyncio.ensure_future(aw)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            raise exc
        raise asyncio.CancelledError
    return task.result()


async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:  # noqa: ASYNC109 (asyncio.wait_for's signature)
    """Await ``aw`` for at most ``timeout`` seconds of real time (None: no limit); on timeout cancel it and
    raise ``TimeoutError``. Use this, never ``asyncio.wait_for`` (ruff bans it here).

    Why not ``asyncio.wait_for``: in Python 3.11 it *swallows a cancel* that arrives while ``aw`` completes
    (it returns ``aw``'s result instead; CPython gh-86296, rewritten in 3.12). A loop that calls it is then
    not stopped by ``Task.cancel()`` and whoever waits for the task waits for ever; on a loaded machine the
    two coincide often (most likely what hung a test in CI for 900 s). ``asyncio.timeout`` counts its own
    cancel apart from others (``Task.uncancel``), so an outside cancel always propagates.
    Pass ``asyncio.shield(fut)`` to keep a future alive past the timeout.
    """
    if timeout is None:
        return await aw
    async with asyncio.timeout(timeout):
        return await aw

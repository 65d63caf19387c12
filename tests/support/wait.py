"""Waiting in tests without betting on the machine's speed.

* ``until`` / ``auntil``: wait for a condition, polling with a short, growing interval, for at most a
  generous timeout; on timeout fail with the condition's description (never return a silent False).
* ``scaled(seconds)``: a timeout stretched by ``SLOWNESS``, this machine's measured slowness (a fixed piece
  of CPU work timed once per session against the time it takes on an idle machine, never below 1), or
  ``ENMEI_TEST_SLOWNESS`` when set. Use it for every wall-clock bound of an integration or e2e test.
* ``idle()``: run the event loop until nothing is ready and no worker thread (``asyncio.to_thread``) is
  busy; the fake-clock rigs use it between two jumps of the clock, so no real time is slept.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from enmei.clock import wait_for

__all__ = ["SLOWNESS", "CountingExecutor", "answers", "auntil", "idle", "measure_slowness", "scaled", "until"]

T = TypeVar("T")

# Seconds the reference work takes on an idle core of a 2020s machine (measured: 0.03-0.05 s).
_REFERENCE_S = 0.05


def measure_slowness() -> float:
    """How many times slower than an idle machine this one runs now (>= 1; best of three short runs)."""
    env = os.environ.get("ENMEI_TEST_SLOWNESS")
    if env:
        return max(1.0, float(env))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        acc = 0
        for i in range(400_000):
            acc += i * i % 7
        best = min(best, time.perf_counter() - t0)
    # A loaded machine also delays wake-ups, which this CPU loop does not see: count the run queue too.
    try:
        load = os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        load = 0.0
    return min(20.0, max(1.0, best / _REFERENCE_S, load))


SLOWNESS = measure_slowness()


def scaled(seconds: float) -> float:
    """``seconds`` stretched by this machine's measured slowness."""
    return seconds * SLOWNESS


def until(pred: Callable[[], T], timeout_s: float = 30.0, what: str = "", *, every_s: float = 0.01,
          fail: bool = True) -> T:
    """Wait until ``pred()`` is truthy and return it; after ``scaled(timeout_s)`` raise ``AssertionError``
    naming ``what`` (or, with ``fail=False``, return the last falsy value). ``pred`` raising is not caught.
    """
    deadline = time.monotonic() + scaled(timeout_s)
    delay = every_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            if not fail:
                return value
            raise AssertionError(f"timed out after {scaled(timeout_s):.0f} s waiting for {what or pred!r}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)


async def auntil(pred: Callable[[], T | Awaitable[T]], timeout_s: float = 30.0, what: str = "",
                 *, every_s: float = 0.01, fail: bool = True) -> T:
    """``until`` for a coroutine: the event loop keeps running while it waits. ``pred`` may be async."""
    deadline = time.monotonic() + scaled(timeout_s)
    delay = every_s
    while True:
        value = pred()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            if not fail:
                return value  # type: ignore[return-value]
            raise AssertionError(f"timed out after {scaled(timeout_s):.0f} s waiting for {what or pred!r}")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.05)


class CountingExecutor(ThreadPoolExecutor):
    """The loop's default executor, counting jobs in flight so that ``idle`` knows a thread is working.

    A job counts as done only once the loop has run the callback that says so, which the worker posts
    *after* asyncio's own result callback (it is registered one loop turn after ``run_in_executor`` has
    wrapped the future): when ``busy`` drops to 0 the awaiting task's wake-up is already queued.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(max_workers=4, thread_name_prefix="rig-worker")
        self.loop = loop
        self.busy = 0
        self.changed = asyncio.Event()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        self.busy += 1
        fut = super().submit(fn, *args, **kwargs)
        self.loop.call_soon(fut.add_done_callback, self._later)
        return fut

    def _later(self, _fut: Future[Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self.loop.call_soon_threadsafe(self._done)

    def _done(self) -> None:
        self.busy -= 1
        self.changed.set()


def counting_executor() -> CountingExecutor:
    """The running loop's ``CountingExecutor``, installed as its default executor on first use."""
    loop = asyncio.get_running_loop()
    ex = getattr(loop, "_enmei_counting_executor", None)
    if ex is None:
        ex = CountingExecutor(loop)
        loop.set_default_executor(ex)
        loop._enmei_counting_executor = ex  # type: ignore[attr-defined]
    return ex


async def idle(max_real_s: float = 60.0) -> None:
    """Return once the loop has nothing ready and no worker thread is busy (two quiet turns in a row).

    Timers on the real clock do not count (a fake-clock rig has none that matter). While only a worker
    thread is busy, this waits for it without spinning. Raises ``AssertionError`` if the loop does not
    quiet down within ``scaled(max_real_s)`` (a loop that never stops scheduling itself).
    """
    loop = asyncio.get_running_loop()
    ex = counting_executor()
    deadline = time.monotonic() + scaled(max_real_s)
    quiet = 0
    while quiet < 2:
        await asyncio.sleep(0)
        # CPython's base loop keeps its runnable callbacks in ``_ready``; elsewhere assume it is busy for
        # a few turns, which only costs time.
        ready = getattr(loop, "_ready", None)
        if ready is None:
            quiet += 1
            continue
        if len(ready) > 0:
            quiet = 0
        elif ex.busy > 0:
            quiet = 0
            ex.changed.clear()
            with contextlib.suppress(TimeoutError):
                await wait_for(ex.changed.wait(), timeout=max(0.01, deadline - time.monotonic()))
        else:
            quiet += 1
        if time.monotonic() > deadline:
            raise AssertionError(f"the event loop did not become idle within {scaled(max_real_s):.0f} s")


async def answers(port: int, path: str = "/health", timeout_s: float = 30.0) -> bool:
    """Whether an HTTP GET of ``path`` on 127.0.0.1:``port`` answers 200 within ``timeout_s`` (scaled).

    A unit is RUNNING once it held for its ``start_s``; on a loaded machine its service may not listen
    yet. Tests that inject faults into the service wait for this first."""
    from enmei.monitor.http import http_get

    async def ok() -> bool:
        try:
            status, _ = await http_get("127.0.0.1", port, path, timeout_s=2)
        except OSError:
            await asyncio.sleep(0.1)
            return False
        return status == 200

    return bool(await auntil(ok, timeout_s, f"an answer on port {port}", fail=False))

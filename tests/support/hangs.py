"""What a hung async test was waiting for, said before pytest-timeout ends it.

pytest-timeout's dump shows the threads, and for an asyncio test the main thread only ever shows the event
loop's ``select``: the await that never returns is invisible (CI lost a 900 s test so). ``arm`` starts a
timer a little before the test's timeout; when it fires, the test's event loop writes every task's await
chain to stderr (captured with the test's output), and the test's own task is cancelled with a one-line
summary, so the failure (and the short summary line) name the stuck await instead of a timeout.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import types
from collections.abc import Callable

__all__ = ["MARGIN_S", "arm", "await_chain"]

# Seconds before pytest-timeout's own end at which the dump is made; ``conftest`` adds them to every test's
# timeout, so a test keeps the whole bound it was written with.
MARGIN_S = 20.0


def await_chain(task: asyncio.Task[object]) -> list[str]:
    """``file:line function`` of each coroutine ``task`` is suspended in, outermost first."""
    out: list[str] = []
    coro: object = task.get_coro()
    for _ in range(64):  # (bounded: a chain is never that deep)
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None) or getattr(coro, "ag_code", None)
        if isinstance(frame, types.FrameType):
            out.append(f"{frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno} {frame.f_code.co_name}")
        elif isinstance(code, types.CodeType):
            out.append(code.co_name)
        nxt = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
        if nxt is None:
            break
        coro = nxt
    return out


def _running_loops() -> list[asyncio.AbstractEventLoop]:
    return [o for o in gc.get_objects() if isinstance(o, asyncio.BaseEventLoop) and o.is_running()]


def _dump_and_cancel(loop: asyncio.AbstractEventLoop, test_name: str) -> None:
    tasks = sorted(asyncio.all_tasks(loop), key=lambda t: t.get_name())
    lines = [f"enmei tests: {test_name!r} about to time out; its {len(tasks)} asyncio task(s):"]
    mine: asyncio.Task[object] | None = None
    for t in tasks:
        chain = await_chain(t)
        lines.append(f"  {t.get_name()}: " + " -> ".join(chain))
        if mine is None and any(c.endswith(f" {test_name}") or c == test_name for c in chain):
            mine = t
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()
    if mine is not None:
        innermost = await_chain(mine)[-3:]
        mine.cancel(f"hung for the test's whole timeout, awaiting: {' -> '.join(innermost)}")


def arm(test_name: str, timeout_s: float) -> Callable[[], None]:
    """Start the timer for a test that pytest-timeout ends after ``timeout_s``; returns the disarm function."""
    if timeout_s <= MARGIN_S * 2:
        return lambda: None

    def fire() -> None:
        for loop in _running_loops():
            try:
                loop.call_soon_threadsafe(_dump_and_cancel, loop, test_name)
            except RuntimeError:  # (closed meanwhile)
                continue

    timer = threading.Timer(timeout_s - MARGIN_S, fire)
    timer.daemon = True
    timer.start()
    return timer.cancel

"""What every request handler shares: the engine, the token, a worker pool, the event broadcaster,
the metrics tally and the newest journal verification.

**Never delay supervision.** Handlers run on the engine's event loop, so they only *read* the engine
there (the unit views, microseconds) and send everything that blocks — SQLite reads, log files,
verification, HTML rendering of large pages — to this context's own small thread pool
(:meth:`WebContext.blocking`). That pool is not the loop's default executor, which the engine uses for
its journal flushes: a flood of web requests queues behind other web requests, never in front of a
remedy. Operator actions only queue a command (``engine.submit``); the engine decides when.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from enmei.box import Reader, VerifyResult, verify
from enmei.engine.loop import Engine
from enmei.web.events import Broadcaster
from enmei.web.metrics import Tally, seed_tally

__all__ = ["WebContext"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class WebContext:
    """The web layer's state for one engine. ``close()`` unsubscribes and ends every event stream."""

    def __init__(self, engine: Engine, *, token: str, token_path: Path, workers: int = 2,
                 verify_every_s: float = 600.0, verify_first_s: float = 10.0) -> None:
        self.engine = engine
        self.token = token
        self.token_path = token_path
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="enmei-web")
        self.events = Broadcaster()
        self.tally = Tally(after_seq=engine.journal.last_seq)
        self.verify_every_s = verify_every_s
        self.verify_first_s = verify_first_s
        self.verified: VerifyResult | None = None
        self.verified_wall: float | None = None
        self.verify_error: str | None = None
        self._verifying: asyncio.Future[VerifyResult] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.replaying = False  # one policy replay at a time
        self.closed = False
        engine.subscribe(self.events)
        engine.subscribe(self.tally)

    # -- off the loop ------------------------------------------------------------------------------

    async def blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` in the web pool and wait for it (the loop keeps running meanwhile)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))

    @contextlib.contextmanager
    def reader(self) -> Iterator[Reader]:
        """A read-only journal connection for one request (call inside ``blocking``)."""
        r = Reader(self.engine.journal.path)
        try:
            yield r
        finally:
            r.close()

    async def visible(self, seq: int, timeout_s: float = 2.0) -> bool:
        """Wait until record ``seq`` is committed, so a read of the journal sees it. False on timeout."""
        journal = self.engine.journal
        end = time.monotonic() + timeout_s
        while journal.durable_seq < seq:
            if time.monotonic() > end or journal.status != "ok":
                return False
            await asyncio.sleep(0.02)
        return True

    # -- background work ---------------------------------------------------------------------------

    def start(self) -> None:
        """Seed the metrics counters from the journal; verify the journal's chain ``verify_first_s`` after
        start (not during the supervisor's own start-up) and every ``verify_every_s`` after that."""
        self._spawn(self._seed())
        self._spawn(self._verify_loop())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _seed(self) -> None:
        upto = self.tally.after_seq
        if upto <= 0 or not await self.visible(upto, timeout_s=30.0):
            return
        try:
            seeded = await self.blocking(seed_tally, self.engine.journal.path, upto)
        except Exception:
            log.exception("cannot count the journal's records for /metrics")
            return
        t = self.tally
        t.verdicts.update(seeded.verdicts)
        t.decisions.update(seeded.decisions)
        t.remedies.update(seeded.remedies)
        t.alerts.update(seeded.alerts)
        for action, total in seeded.duration_sum.items():
            t.duration_sum[action] = t.duration_sum.get(action, 0.0) + total
        for action, counts in seeded.durations.items():
            mine = t.durations.setdefault(action, [0] * len(counts))
            t.durations[action] = [a + b for a, b in zip(mine, counts, strict=True)]

    async def _verify_loop(self) -> None:
        await asyncio.sleep(self.verify_first_s)
        while not self.closed:
            with contextlib.suppress(Exception):
                await self.verify()
            await asyncio.sleep(self.verify_every_s)

    async def verify(self) -> VerifyResult:
        """Verify the journal in the pool (one run at a time; callers share a running one): its hash chain,
        and with the supervisor's anchor key its signed anchors and head (read before the records, so a
        journal still being written never looks cut).

        Raises ``BoxError`` if the journal cannot be read (also kept in ``verify_error``).
        """
        if self._verifying is None or self._verifying.done():
            loop = asyncio.get_running_loop()
            anchors = self.engine.journal.anchors
            self._verifying = loop.run_in_executor(
                self.pool, functools.partial(verify, self.engine.journal.path, anchors=anchors))
        try:
            res = await asyncio.shield(self._verifying)
        except Exception as exc:
            self.verify_error = str(exc)
            raise
        self.verified, self.verified_wall, self.verify_error = res, time.time(), None
        return res

    def close(self) -> None:
        """Stop listening to the engine, end the event streams and background work, release the pool."""
        if self.closed:
            return
        self.closed = True
        for fn in (self.events, self.tally):
            with contextlib.suppress(ValueError):
                self.engine.subscribers.remove(fn)
        self.events.close()
        for task in list(self._tasks):
            task.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

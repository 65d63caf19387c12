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

from enmei.box import VerifyResult
from enmei.box.readers import AnyReader, open_reader, verify_source
from enmei.clock import wait_for
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
        self.tally = Tally(after_seq=engine.journal.last_seq, after_wall=engine.clock.wall())
        self.verify_every_s = verify_every_s
        self.verify_first_s = verify_first_s
        self.verified: VerifyResult | None = None
        self.verified_wall: float | None = None
        self.verify_error: str | None = None
        self._verifying: asyncio.Future[VerifyResult] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.replaying = False  # one policy replay at a time
        self.closed = False
        self._seeding: asyncio.Task[None] | None = None
        engine.subscribe(self.events)
        engine.subscribe(self.tally)
        engine.observers.append(self.tally.observe)

    # -- off the loop ------------------------------------------------------------------------------

    async def blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` in the web pool and wait for it (the loop keeps running meanwhile)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))

    @contextlib.contextmanager
    def reader(self) -> Iterator[AnyReader]:
        """A read-only journal connection for one request (call inside ``blocking``): the SQLite file or
        this supervisor's chain in PostgreSQL."""
        r = open_reader(self.engine.journal)
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
        self._seeding_task()
        self._spawn(self._verify_loop())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _seeding_task(self) -> asyncio.Task[None]:
        if self._seeding is None:
            self._seeding = asyncio.create_task(self._seed(), name="enmei-web-seed")
            self._tasks.add(self._seeding)
        return self._seeding

    async def counters(self, timeout_s: float = 30.0) -> Tally | None:
        """A copy of the metrics counters once they are seeded from the journal (the seeding starts here if
        ``start`` has not started it); None if that takes longer than ``timeout_s`` — a scrape then fails
        rather than show counters that went back (``rate()`` would read that as a reset)."""
        task = self._seeding_task()
        with contextlib.suppress(TimeoutError):
            await wait_for(asyncio.shield(task), timeout_s)
        return self.tally.copy() if task.done() else None

    async def _seed(self) -> None:
        """Add the journal's counts up to the tally's start (``enmei.web.counters``). A journal that cannot
        be read is logged, and the counters go on from what was counted live."""
        upto = self.tally.after_seq
        if upto <= 0:
            return
        if not await self.visible(upto, timeout_s=30.0):
            log.warning("the journal did not catch up in 30 s: /metrics counters seeded from what it holds")
        with contextlib.suppress(Exception):
            await self.engine.journal.aflush(timeout_s=5.0)  # probe samples queued before the tally began
        try:
            seeded = await self.blocking(seed_tally, self.engine.journal, upto, self.tally.after_wall)
        except Exception:
            log.exception("cannot count the journal's records for /metrics")
            return
        self.tally.merge(seeded)

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
                self.pool, functools.partial(verify_source, self.engine.journal, anchors=anchors))
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
        with contextlib.suppress(ValueError):
            self.engine.observers.remove(self.tally.observe)
        self.events.close()
        for task in list(self._tasks):
            task.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

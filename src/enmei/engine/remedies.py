"""Running one remedy: its lifecycle PENDING -> RUNNING -> SUCCEEDED | FAILED | TIMED_OUT | CANCELLED,
its deadline, and its intent record.

Before a remedy touches its unit, a ``remedy.start`` record is written *and made durable* (the intent):
after a supervisor crash, a remedy with an intent and no outcome is known to have been interrupted, and
is never silently repeated.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from enmei.clock import within
from enmei.errors import EnmeiError, StateError
from enmei.model import Outcome, RemedyState
from enmei.remedy.base import HostControl, HostRemedy, Remedy, Result, UnitControl

__all__ = ["RemedyRun"]

log = logging.getLogger(__name__)

S = RemedyState
_ARCS: Mapping[RemedyState, frozenset[RemedyState]] = {
    S.PENDING: frozenset({S.RUNNING, S.CANCELLED}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.TIMED_OUT, S.CANCELLED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.TIMED_OUT: frozenset(),
    S.CANCELLED: frozenset(),
}


@dataclass
class RemedyRun:
    remedy_id: str
    remedy: Remedy
    unit: UnitControl | HostControl  # a host remedy's target is the host
    args: Mapping[str, Any]
    decision_seq: int
    not_before: float | None = None
    state: RemedyState = RemedyState.PENDING
    started_mono: float = 0.0
    task: asyncio.Task[Outcome] | None = field(default=None, repr=False)
    cancelled_by: str | None = None  # who pre-empted it (an operator), and why: in its outcome record
    cancel_reason: str | None = None

    def cancel(self, by: str, reason: str) -> bool:
        """Pre-empt the run (an operator's command): its outcome is CANCELLED with ``reason`` and
        ``cancelled_by``. False if it is not running any more."""
        if self.task is None or self.task.done():
            return False
        self.cancelled_by, self.cancel_reason = by, reason
        self.task.cancel()
        return True

    @property
    def action(self) -> str:
        return self.remedy.name

    def deadline_s(self) -> float:
        """The remedy's deadline for its target and arguments."""
        if isinstance(self.remedy, HostRemedy):
            return self.remedy.host_deadline_s(cast(HostControl, self.unit), self.args)
        return self.remedy.deadline_s(cast(UnitControl, self.unit), self.args)

    def _act(self) -> Awaitable[Result]:
        if isinstance(self.remedy, HostRemedy):
            return self.remedy.run_host(cast(HostControl, self.unit), self.args)
        return self.remedy.run(cast(UnitControl, self.unit), self.args)

    def transition(self, new: RemedyState) -> None:
        if new not in _ARCS[self.state]:
            raise StateError(f"remedy {self.remedy_id}", str(self.state), tuple(str(s) for s in _ARCS[self.state]))
        self.state = new

    async def execute(self, intent: Callable[[RemedyRun], Awaitable[None]]) -> Outcome:
        """Wait until ``not_before``, write the intent (``intent``), run under the deadline, return the outcome."""
        clock = self.unit.clock
        try:
            if self.not_before is not None:
                await clock.sleep(self.not_before - clock.monotonic())
            await intent(self)
            self.transition(RemedyState.RUNNING)
            self.started_mono = clock.monotonic()
            deadline = self.deadline_s()
            try:
                result = await within(clock, self._act(), deadline)
            except TimeoutError:
                result = Result(RemedyState.TIMED_OUT, f"did not finish within {deadline:g}s")
            except EnmeiError as exc:
                result = Result.failed(str(exc))
        except asyncio.CancelledError:
            if self.state is RemedyState.PENDING:
                self.started_mono = clock.monotonic()
            self.state = RemedyState.CANCELLED
            data = {"cancelled_by": self.cancelled_by} if self.cancelled_by else {}
            return self._outcome(Result(RemedyState.CANCELLED, self.cancel_reason or "cancelled", data))
        except Exception as exc:  # a bug in a remedy must not take the supervisor down
            log.exception("remedy %s crashed", self.remedy_id)
            if self.state is RemedyState.PENDING:
                self.transition(RemedyState.RUNNING)
            result = Result.failed(f"remedy crashed: {type(exc).__name__}: {exc}")
        self.transition(result.state)
        return self._outcome(result)

    def _outcome(self, result: Result) -> Outcome:
        return Outcome(self.remedy_id, self.unit.name, self.action, result.state, self.started_mono,
                       self.unit.clock.monotonic(), result.detail, dict(result.data))

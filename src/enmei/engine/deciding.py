"""Deciding without stalling the loop: the policy evaluates off the loop, under a deadline, and a
fallback policy decides whenever it is late.

A policy file runs in a sandbox process (``WorkerSandbox``); waiting for its answer used to block the
engine's loop, so one slow builtin call (``("x" * (1 << 26)).replace("x", "y")``: a single instruction,
out of reach of the step and time guards) held back every restart for seconds. Now, for such a policy
(``offloop`` true), every evaluation, reload check and revert runs in one worker thread of its own, in
submission order, and the loop only waits on events. Promises:

* **Order.** Events are decided in the order they come, and their decisions carried out in that order:
  the worker takes one job at a time, and results are applied first in, first out. A job whose deadline
  passed is decided by the fallback at that moment, and so is every job queued behind it, in order;
  their late results, if they ever come, are dropped. So one unit's decisions are never reordered.
* **Deadline.** An event not decided within ``deadline_s`` (real time, from the moment it was handed
  over) is decided by the fallback instead, and while the worker is still busy with the late one every
  new event goes straight to the fallback. A unit's exit is thus restarted within ``deadline_s`` plus
  the restart itself, whatever the policy does.
* **The fallback** is the policy's own (``PolicyManager.fallback``: the built-in policy), or the
  built-in policy: restart an exited unit after its backoff while budget is left, escalate when spent,
  restart on a failed probe, the panic and aging rules (see ``enmei.policy.builtin``). It holds no state,
  runs on the loop and takes microseconds. Its decisions are journaled as its own (``policy:
  builtin-1``), after a ``policy`` record ``{"event": "overrun", ...}`` naming the late policy, the
  handler, the unit and the deadline.
* **Revert.** After ``overruns`` overruns in a row (evaluations that missed the deadline, with no
  evaluation answered in time in between; the events queued behind a late one, or that came while the
  worker was still busy with it, do not count: a burst of events is not a slow policy), the policy is
  asked, once, to ``revert()`` (the request waits in the worker behind the late evaluation): a policy
  manager goes back to the version that ran before the slow one (or, without one, suspends itself and
  lets its fallback decide until the file changes); the notice is journaled (``reverted`` /
  ``suspended``).
* Nothing here raises into the loop: a policy that raises is journaled as an ``error`` and decides
  nothing (a manager never raises: it answers with its fallback itself).

A policy that is not ``offloop`` (the built-in policy, the shipped library in this process, a test's
policy) is called on the loop as before: running it in a thread would gain nothing, since an evaluation
inside this process holds the interpreter lock for its whole length (measured: a 0.22 s call in
``InProcessSandbox`` stalled another thread for 0.22 s).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from enmei.model import Decision, Event, RecordKind
from enmei.policy.base import Policy, ReloadablePolicy, View
from enmei.policy.builtin import BuiltinPolicy
from enmei.policy.encode import handler_for
from enmei.visor.cage import join_thread

__all__ = ["DEFAULT_DEADLINE_S", "DEFAULT_OVERRUNS", "Decider"]

log = logging.getLogger(__name__)

DEFAULT_DEADLINE_S = 0.4
DEFAULT_OVERRUNS = 3
#: jobs waiting for the worker at most: behind a stuck evaluation, history notes beyond it are dropped
_MAX_INFLIGHT = 1000

RecordFn = Callable[[str, str | None, Mapping[str, Any]], int]
ExecuteFn = Callable[[Decision, "int | None", View], object]
Notices = list[dict[str, Any]]


@dataclass(eq=False)
class _Job:
    event: Event
    view: View
    cause_seq: int | None
    submitted: float = field(default_factory=time.monotonic)
    abandoned: bool = False  # decided by the fallback; the worker skips it, its late result is dropped


class Decider:
    """Hands events to the policy and carries out its decisions (see the module docstring)."""

    def __init__(self, policy: Policy, *, record: RecordFn, execute: ExecuteFn,
                 deadline_s: float = DEFAULT_DEADLINE_S, overruns: int = DEFAULT_OVERRUNS) -> None:
        self.policy = policy
        self.fallback: Policy = getattr(policy, "fallback", None) or BuiltinPolicy()
        self.offloop = bool(getattr(policy, "offloop", False))
        self.deadline_s = deadline_s
        self.overruns_to_revert = overruns
        self._record = record
        self._execute = execute
        self._pending: deque[_Job] = deque()
        self._inflight = 0  # jobs handed to the worker and not yet finished (abandoned ones included)
        self._late = False  # the worker is still busy with a job whose deadline passed
        self._timer: asyncio.TimerHandle | None = None
        self._reloading = False
        self._closed = False
        self.overruns = 0  # in a row
        self.overruns_total = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None

    # -- the engine's side -------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether the worker has jobs not yet answered (a test rig waiting for the loop to be idle should
        wait for this too: an answer will come back to the loop)."""
        return self._inflight > 0

    def decide(self, event: Event, view: View, cause_seq: int | None) -> None:
        """Have ``event`` decided and its decisions carried out (now, or when the worker answers)."""
        if not self.offloop:
            self._apply(*self._call(event, view), cause_seq, view)
            return
        if self._late or self._closed:
            self._fall_back(event, view, cause_seq)
            return
        job = _Job(event, view, cause_seq)
        self._pending.append(job)
        self._submit(self._evaluate, job, self._evaluated)
        if len(self._pending) == 1:
            self._arm()

    def reload(self) -> None:
        """Ask a reloadable policy to check its file (in the worker, after the jobs before it)."""
        if not isinstance(self.policy, ReloadablePolicy):
            return
        if not self.offloop:
            self._notices(self.policy.check_reload())
            return
        if self._reloading or self._late or self._closed:
            return  # one check at a time; none while the worker is stuck
        self._reloading = True
        policy = self.policy

        def check() -> Notices:
            return [*policy.check_reload(), *policy.drain_notices()]

        def done(notices: Notices | None, error: BaseException | None) -> None:
            self._reloading = False
            if error is not None:
                log.error("policy reload check failed: %s", error)
            self._notices(notices or [])

        self._submit(check, None, done)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Stop taking jobs, drop the queued ones, and wait (at most ``timeout_s``) for the worker."""
        self._closed = True
        for job in self._pending:
            job.abandoned = True
        self._pending.clear()
        if self._timer is not None:
            self._timer.cancel()
        worker, self._worker = self._worker, None
        if worker is None:
            return
        worker.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await asyncio.get_running_loop().run_in_executor(None, worker.shutdown, True)

    # -- on the loop -------------------------------------------------------------------------------

    def _call(self, event: Event, view: View) -> tuple[list[Decision], Notices]:
        """One evaluation where it is called from; a policy that raises decides nothing (journaled)."""
        try:
            decisions = self.policy.decide(event, view)
        except Exception as exc:
            log.exception("policy %s failed", self.policy.version)
            return [], [{"event": "error", "policy": self.policy.version, "unit": getattr(event, "unit", None),
                         "error": f"{type(exc).__name__}: {exc}"}]
        notices = self.policy.drain_notices() if isinstance(self.policy, ReloadablePolicy) else []
        return decisions, notices

    def _apply(self, decisions: list[Decision], notices: Notices, cause_seq: int | None, view: View) -> None:
        self._notices(notices)  # an error the policy survived is journaled before the fallback's decisions
        for d in decisions:
            try:
                self._execute(d, cause_seq, view)
            except Exception:  # one bad decision must not drop the ones after it
                log.exception("carrying out %r failed", d)

    def _notices(self, notices: Notices) -> None:
        for n in notices:
            try:
                self._record(RecordKind.POLICY, n.get("unit"), n)
            except Exception:
                log.exception("journaling a policy notice failed")

    def _fall_back(self, event: Event, view: View, cause_seq: int | None) -> None:
        try:
            decisions = self.fallback.decide(event, view)
        except Exception:  # the fallback of last resort must not take the loop down either
            log.exception("fallback policy %s failed", self.fallback.version)
            decisions = []
        self._apply(decisions, [], cause_seq, view)
        note = getattr(self.policy, "note", None)
        if note is not None and self.offloop and not self._closed and self._inflight < _MAX_INFLIGHT:
            # The policy's history learns of the event and of what was done, in order, in the worker.
            self._submit(lambda: note(event, decisions, view.now), None, None)

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        head = self._pending[0]
        left = head.submitted + self.deadline_s - time.monotonic()
        loop = self._loop or asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, left), self._overrun, head)

    def _overrun(self, job: _Job) -> None:
        self._timer = None
        if job.abandoned or not self._pending or self._pending[0] is not job:
            return
        late = list(self._pending)
        self._pending.clear()
        self._late = True
        self.overruns += 1
        self.overruns_total += 1
        self._record(RecordKind.POLICY, getattr(job.event, "unit", None), {
            "event": "overrun", "policy": self.policy.version, "handler": handler_for(job.event),
            "cause": type(job.event).__name__, "deadline_s": self.deadline_s,
            "waited_s": round(time.monotonic() - job.submitted, 4), "queued": len(late) - 1,
            "fallback": self.fallback.version, "in_a_row": self.overruns})
        log.warning("policy %s did not decide within %gs: the fallback decides", self.policy.version,
                    self.deadline_s)
        for j in late:
            j.abandoned = True
            self._fall_back(j.event, j.view, j.cause_seq)
        if self.overruns == self.overruns_to_revert:
            self._revert()

    def _revert(self) -> None:
        revert = getattr(self.policy, "revert", None)
        if revert is None:
            return
        reason = f"{self.overruns_to_revert} evaluations in a row did not answer within {self.deadline_s:g}s"

        def done(notices: Notices | None, error: BaseException | None) -> None:
            if error is not None:
                log.error("policy revert failed: %s", error)
            self._notices(notices or [])

        policy = self.policy

        def run() -> Notices:
            notices: Notices = revert(reason)
            return [*notices, *policy.drain_notices()] if isinstance(policy, ReloadablePolicy) else notices

        self._submit(run, None, done)

    # -- the worker --------------------------------------------------------------------------------

    def _submit(self, fn: Callable[..., Any], job: _Job | None,
                done: Callable[..., None] | None) -> None:
        if self._worker is None:
            self._loop = asyncio.get_running_loop()
            # The evaluation thread joins the helper cage where threads can (v1 cpu): an in-process policy
            # spinning to its time limit competes with the helpers, not with the units or the loop thread.
            self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="enmei-policy",
                                                                 initializer=join_thread)
        loop = self._loop
        assert loop is not None
        self._inflight += 1
        fut = self._worker.submit(fn, job) if job is not None else self._worker.submit(fn)

        def finished(f: concurrent.futures.Future[Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(self._finished, f, job, done)

        fut.add_done_callback(finished)

    def _finished(self, fut: concurrent.futures.Future[Any], job: _Job | None,
                  done: Callable[..., None] | None) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._late = False  # the worker is free again
        if fut.cancelled():
            return
        error = fut.exception()
        result = None if error is not None else fut.result()
        if done is not None:
            try:
                if job is not None:
                    done(job, result, error)
                else:
                    done(result, error)
            except Exception:
                log.exception("handling a policy result failed")

    def _evaluate(self, job: _Job) -> tuple[list[Decision], Notices] | None:
        """In the worker: the job's evaluation, unless the fallback has decided it meanwhile."""
        if job.abandoned:
            return None
        return self._call(job.event, job.view)

    def _evaluated(self, job: _Job, result: tuple[list[Decision], Notices] | None,
                   error: BaseException | None) -> None:
        if job.abandoned or self._closed:
            if result is not None:
                self._notices(result[1])  # what the late policy reported (killed, failed) is still news
            return
        head = self._pending.popleft() if self._pending else None
        assert head is job, "the worker answers in order"
        self.overruns = 0
        if error is not None:
            log.error("policy evaluation failed: %s", error)
            result = ([], [{"event": "error", "policy": self.policy.version, "unit": getattr(job.event, "unit", None),
                            "error": f"{type(error).__name__}: {error}"}])
        assert result is not None
        self._apply(result[0], result[1], job.cause_seq, job.view)
        self._arm()

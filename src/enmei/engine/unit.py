"""One unit as the engine keeps it: its lifecycle state machine, health, history, and the control a
remedy acts through.

The lifecycle arcs (anything else is a ``StateError``, so no sequence of events reaches an undefined
state)::

    PENDING  -> STARTING (start) | RUNNING (adopted) | STOPPED (stop asked before any start)
    STARTING -> RUNNING (start held) | EXITED (died during start) | STOPPING
    RUNNING  -> STOPPING | EXITED (crash, kill)
    STOPPING -> STOPPED | EXITED (ended on its own while stopping)
    STOPPED  -> STARTING | BACKOFF | ESCALATED
    EXITED   -> STARTING | BACKOFF | ESCALATED | STOPPED
    BACKOFF  -> STARTING | STOPPED | ESCALATED
    ESCALATED -> STARTING | STOPPED | BACKOFF
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enmei.clock import Clock, uninterrupted, within
from enmei.config.model import UnitBase
from enmei.errors import StartError, StateError, StopError, VisorError
from enmei.model import Health, RecordKind, Severity, UnitState, describe_exit
from enmei.monitor.startup import LogLineWatch, NotifySocket, belongs_to
from enmei.policy.base import UnitView
from enmei.remedy.budget import RestartBudget
from enmei.visor.base import Backend, Identity

if TYPE_CHECKING:
    from enmei.engine.remedies import RemedyRun

__all__ = ["ARCS", "UnitRuntime"]

S = UnitState
ARCS: Mapping[UnitState, frozenset[UnitState]] = {
    S.PENDING: frozenset({S.STARTING, S.RUNNING, S.STOPPED}),
    S.STARTING: frozenset({S.RUNNING, S.EXITED, S.STOPPING}),
    S.RUNNING: frozenset({S.STOPPING, S.EXITED}),
    S.STOPPING: frozenset({S.STOPPED, S.EXITED}),
    S.STOPPED: frozenset({S.STARTING, S.BACKOFF, S.ESCALATED}),
    S.EXITED: frozenset({S.STARTING, S.BACKOFF, S.ESCALATED, S.STOPPED}),
    S.BACKOFF: frozenset({S.STARTING, S.STOPPED, S.ESCALATED}),
    S.ESCALATED: frozenset({S.STARTING, S.STOPPED, S.BACKOFF}),
}

RecordFn = Callable[[str, str | None, Mapping[str, Any]], int]
AlertFn = Callable[[str, str, Severity, Mapping[str, Any]], None]

_LOAD_KEEP = 1200  # observations of each metric kept for rejuvenation timing (20 min at 1 Hz)


class UnitRuntime:
    """A unit under supervision. Implements ``enmei.remedy.UnitControl``."""

    def __init__(self, name: str, spec: UnitBase, backend: Backend, clock: Clock, *, record: RecordFn,
                 alert: AlertFn, identity_changed: Callable[[str, Identity | None], None],
                 on_fresh: Callable[[str], None] | None = None, notify_dir: Path | None = None) -> None:
        """``on_fresh(name)`` is called whenever a new instance begins (a start, a restored guest): the
        engine resets the unit's detectors there. ``notify_dir``: where the notify sockets of units with
        ``startup_notify`` are made (the state dir's ``notify``)."""
        self.name = name
        self._spec = spec
        self.backend = backend
        self.clock = clock
        self._record = record
        self._alert = alert
        self._identity_changed = identity_changed
        self._on_fresh = on_fresh
        self._state = UnitState.PENDING
        self.state_since = clock.monotonic()
        self.health = Health.UNKNOWN
        self.started_mono: float | None = None
        self.restarts: deque[float] = deque(maxlen=max(64, spec.restart.budget * 4))
        self.remedy: RemedyRun | None = None
        self._exit: asyncio.Future[Mapping[str, Any]] | None = None
        self._start_abandoned = False  # EXITED because a cancel gave the start up (``_abandon_start``)
        self.load: dict[str, deque[tuple[float, float]]] = {}
        self._notify_dir = notify_dir
        self._ready = asyncio.Event()
        self._log_watch: LogLineWatch | None = None
        self._notify: NotifySocket | None = None
        self._notify_refused = False
        self.budget = _budget(spec)
        # Backoff streaks (see RestartConfig): crash retries in a row, probe-caused restarts in a row, both
        # since the unit was last running for reset_after_s (or reset); the wait the last crash earned.
        self.crash_retries = 0
        self.probe_restarts = 0
        self._crash_delay_s = 0.0
        self.last_reset: float | None = None  # monotonic time of the last ``reset`` (ctl, web)
        self._running_since = self.state_since  # (for an adopted unit: since its instance started)

    # -- state -------------------------------------------------------------------------------------

    @property
    def spec(self) -> UnitBase:
        return self._spec

    def respec(self, spec: UnitBase) -> None:
        """Run on with ``spec`` (a reload's in-place change): its budget and backoff are the new spec's,
        the restart history is kept; the instance is not touched."""
        self._spec = spec
        self.restarts = deque(self.restarts, maxlen=max(64, spec.restart.budget * 4))
        self.budget = _budget(spec)  # (the backoff streaks are kept: the same instance runs on)

    @property
    def busy(self) -> bool:
        """A remedy is running on the unit."""
        return self.remedy is not None

    @property
    def state(self) -> UnitState:
        return self._state

    def set_state(self, state: UnitState, reason: str) -> None:
        """Move along one arc of the lifecycle (journaled); a move to the same state is a no-op."""
        old = self._state
        if state is old:
            return
        if state not in ARCS[old]:
            raise StateError(f"unit {self.name}", str(old), tuple(str(s) for s in sorted(ARCS[old])))
        self._start_abandoned = False
        self._state = state
        self.state_since = self.clock.monotonic()
        if state is UnitState.RUNNING:
            self._running_since = self.state_since
        if state in (UnitState.STARTING,):
            self.started_mono = self.state_since
        elif state in (UnitState.EXITED, UnitState.STOPPED):
            self.started_mono = None
        self._record(RecordKind.UNIT_STATE, self.name, {"from": str(old), "to": str(state), "reason": reason})

    def set_health(self, health: Health, reason: str) -> None:
        if health is self.health:
            return
        old, self.health = self.health, health
        self._record(RecordKind.HEALTH, self.name, {"from": str(old), "to": str(health), "reason": reason})

    def _settle(self, now: float) -> None:
        """A unit running for ``reset_after_s`` has proven itself: its backoff streaks start over."""
        if self._state is UnitState.RUNNING and self.budget.healthy(now - self._running_since):
            self.crash_retries = 0
            self.probe_restarts = 0
            self._crash_delay_s = 0.0

    def next_delay_s(self, now: float) -> float:
        """The wait before this unit's next restart, by its cause: a probe-caused one while it is up,
        else the one its last crash earned (0 after a healthy period)."""
        self._settle(now)
        if self.alive() and self._state in (UnitState.RUNNING, UnitState.STARTING):
            return self.budget.probe_delay_s(self.probe_restarts)
        return self._crash_delay_s

    def _crashed(self, was: UnitState) -> None:
        """An instance ended on its own (or its start failed) while in state ``was``:
        after a healthy period a restart at once, else the next retry's backoff less the time the
        instance lived since its start (``RestartBudget.crash_delay_s``), the streak one longer."""
        if was not in (UnitState.STARTING, UnitState.RUNNING):
            return  # stopped on purpose (an operator's stop, a restart's stop): not a crash
        now = self.clock.monotonic()
        if was is UnitState.RUNNING and self.budget.healthy(now - self._running_since):
            self.crash_retries = 0
            self.probe_restarts = 0
            self._crash_delay_s = 0.0
            return
        lived = now - self.started_mono if self.started_mono is not None else 0.0
        self._crash_delay_s = self.budget.crash_delay_s(self.crash_retries, lived_s=lived)
        self.crash_retries += 1

    def probe_restarted(self) -> None:
        """A restart of this unit while it was up (a failed probe, an anomaly) was carried out."""
        self.probe_restarts += 1

    def reset(self, now: float) -> dict[str, Any]:
        """Forget the restart budget's restarts and the backoff streaks (``enmei ctl reset``); from now on
        the shipped policy's breaker counts only failures after ``now``. Returns what was cleared."""
        cleared = {"restarts_in_window": self.budget.in_window(self.restarts, now),
                   "crash_retries": self.crash_retries, "probe_restarts": self.probe_restarts,
                   "next_delay_s": self._crash_delay_s}
        self.restarts.clear()
        self.crash_retries = 0
        self.probe_restarts = 0
        self._crash_delay_s = 0.0
        self.last_reset = now
        return cleared

    def view(self, now: float) -> UnitView:
        next_delay = self.next_delay_s(now)
        recent = self.budget.in_window(self.restarts, now)
        spec = self._spec
        return UnitView(
            name=self.name, backend=self.backend.kind, state=self._state, health=self.health, alive=self.alive(),
            uptime_s=(now - self.started_mono) if self.started_mono is not None and self.alive() else None,
            remedy=self.remedy.action if self.remedy else None, restarts_in_window=recent,
            budget=spec.restart.budget, window_s=spec.restart.window_s, next_delay_s=next_delay,
            escalate_retry_s=spec.escalate.retry_every_s, rejuvenate_every_s=spec.rejuvenate.every_s,
            rejuvenate_window_s=spec.rejuvenate.window_s, stop_timeout_s=spec.stop_timeout_s,
            capabilities=frozenset(str(c) for c in self.backend.capabilities),
            breaker_failures=spec.escalate.breaker_failures, breaker_within_s=spec.escalate.breaker_within_s,
            breaker_open_s=spec.escalate.breaker_open_s, last_reset=self.last_reset,
            reset_after_s=spec.restart.reset_after_s,
        )

    # -- control (what remedies use) ---------------------------------------------------------------

    def alive(self) -> bool:
        return self.backend.alive(self.name)

    async def start(self) -> None:
        self.set_state(UnitState.STARTING, "starting")
        self._exit = asyncio.get_running_loop().create_future()
        if self._on_fresh is not None:
            self._on_fresh(self.name)  # the detectors forget the old instance (streaks, trends)
        self.set_health(Health.UNKNOWN, "new instance")
        spec = self._prepare_startup()
        try:
            identity = await self.backend.start(self.name, spec)
        except StartError as exc:
            self.close_startup()
            self._crashed(UnitState.STARTING)
            self._record(RecordKind.UNIT_EVENT, self.name, {"event": "start_failed", "cause": exc.cause})
            self.set_state(UnitState.EXITED, f"start failed: {exc.cause}")
            if not self._exit.done():
                self._exit.set_result({"start_failed": exc.cause})
            raise
        except asyncio.CancelledError:
            # Given up on while the backend was starting it (the remedy's deadline, an operator): a failed
            # start, whatever the instance did later (a backend ends what it was starting, ``Backend.start``).
            await uninterrupted(self._abandon_start(
                "the start did not complete: cancelled while the backend was starting it"))
            raise
        self._identity_changed(self.name, identity)
        if self._notify is not None:
            self._notify.recheck()  # a READY=1 that came before the backend named the instance

    # -- start-up ----------------------------------------------------------------------------------

    def _prepare_startup(self) -> UnitBase:
        """Arm the unit's start-up condition for the instance about to start; the spec to start it with
        (with ``NOTIFY_SOCKET`` in its environment for ``startup_notify``)."""
        self.close_startup()
        self._ready = asyncio.Event()
        self._notify_refused = False
        spec = self._spec
        if spec.startup_log is not None:
            path = self.backend.log_path(self.name, spec.startup_log_stream)
            if path is not None:
                self._log_watch = LogLineWatch(path, spec.startup_log, LogLineWatch.size(path))
        if spec.startup_notify and self._notify_dir is not None:
            try:
                self._notify = NotifySocket(self._notify_dir, self.name, accept=self._notify_accept,
                                            on_ready=lambda pid: self.mark_ready(f"READY=1 from pid {pid}"),
                                            on_refused=self._notify_refuse)
            except OSError as exc:
                raise StartError(self.name, "start", f"cannot make its notify socket: {exc}") from exc
            self._notify.start()
            env = {**getattr(spec, "env", {}), "NOTIFY_SOCKET": self._notify.address}
            spec = spec.model_copy(update={"env": env})
        return spec

    def _notify_accept(self, pid: int) -> bool | None:
        ident = self.backend.identity(self.name)
        if ident is None:
            return None
        cgroup = ident.extra.get("cgroup")
        return belongs_to(pid, ident.pid, cgroup if isinstance(cgroup, str) else None)

    def _notify_refuse(self, pid: int) -> None:
        if not self._notify_refused:
            self._notify_refused = True
            self._record(RecordKind.UNIT_EVENT, self.name, {
                "event": "notify_refused", "pid": pid,
                "cause": "READY=1 from a process that is not the unit's (main process, session, cgroup)"})

    def close_startup(self) -> None:
        """Release what the start-up condition holds (the notify socket)."""
        self._log_watch = None
        if self._notify is not None:
            self._notify.close()
            self._notify = None

    def mark_ready(self, by: str) -> None:
        """The start-up condition holds (``by`` says how); only while STARTING, once per instance."""
        if self._state is not UnitState.STARTING or self._ready.is_set():
            return
        self._ready.set()
        since = self.started_mono if self.started_mono is not None else self.clock.monotonic()
        self._record(RecordKind.UNIT_EVENT, self.name, {
            "event": "ready", "by": by, "after_s": round(self.clock.monotonic() - since, 3)})

    def probe_passed(self, probe: str, mono: float) -> None:
        """A probe passed (the engine calls this while the unit is STARTING): the start-up probe's
        first pass of this instance completes the start-up."""
        if probe == self._spec.startup_probe and self.started_mono is not None and mono >= self.started_mono:
            self.mark_ready(f"probe {probe} passed")

    async def _await_startup(self, fut: asyncio.Future[Mapping[str, Any]]) -> str | None:
        """Wait for the start-up condition, the instance's end, or ``startup_timeout_s`` (from the start).
        None once ready; else why not (an instance that never completed its start-up is stopped)."""
        spec = self._spec
        since = self.started_mono if self.started_mono is not None else self.clock.monotonic()
        deadline = since + spec.startup_timeout_s
        while not self._ready.is_set() and not fut.done():
            if self._log_watch is not None and (line := self._log_watch.check()) is not None:
                self.mark_ready(f"log line {line[:200]!r}")
                break
            left = deadline - self.clock.monotonic()
            if left <= 0:
                break
            gate = asyncio.ensure_future(self._ready.wait())
            try:
                step = min(left, 0.1) if self._log_watch is not None else left
                with contextlib.suppress(TimeoutError):
                    waiters: set[asyncio.Future[Any]] = {gate, asyncio.shield(fut)}
                    await within(self.clock, asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED), step)
            finally:
                gate.cancel()
        if fut.done() or self._ready.is_set():
            return None
        why = f"start-up not complete within startup_timeout_s = {spec.startup_timeout_s:g}s " \
              f"(waiting for {spec.startup_condition()})"
        self._record(RecordKind.UNIT_EVENT, self.name, {"event": "startup_timeout", "cause": why})
        self._crashed(UnitState.STARTING)  # a start that never completed: the next one is a retry
        try:
            await self.stop()
        except StopError as exc:
            return f"{why}; could not stop it: {exc.cause}"
        return f"{why}; stopped"

    async def stop(self, timeout_s: float | None = None) -> None:
        if not self.alive():
            if self._state in (UnitState.STARTING, UnitState.RUNNING):
                self.set_state(UnitState.EXITED, "gone before the stop")
            elif self._state is UnitState.EXITED and self._start_abandoned:
                # a start given up because this stop cancelled it (``wait_stable``): the unit is stopped, as asked
                self.set_state(UnitState.STOPPED, "stopped (its start was given up)")
            return
        self.set_state(UnitState.STOPPING, "stopping")
        await self.backend.stop(self.name, timeout_s=self._spec.stop_timeout_s if timeout_s is None else timeout_s)
        if self._state is UnitState.STOPPING or (self._state is UnitState.EXITED and self._start_abandoned):
            self.set_state(UnitState.STOPPED, "stopped")  # (also when the start this stop cancelled ended first)
        self.close_startup()
        self._identity_changed(self.name, None)

    async def wait_stable(self, start_s: float | None = None) -> str | None:
        """None once the instance started last has held (RUNNING); else why not. Cancelled before it held
        (the start remedy's deadline, an operator), the instance is ended as a failed start (see ``start``)
        before the cancellation goes on: a unit is never left STARTING with nothing to finish its start."""
        try:
            return await self._wait_stable(start_s)
        except asyncio.CancelledError:
            if self._state is UnitState.STARTING:
                await uninterrupted(self._abandon_start("the start did not complete: cancelled before it held"))
            raise

    async def _abandon_start(self, why: str) -> None:
        """The start under way failed (``why``): journaled as ``start_failed``, its instance (if any) ended,
        the unit EXITED, the next start a retry with backoff. Runs while a cancellation is delivered, to
        its end (``uninterrupted``: a second cancellation does not leave the unit half-stopped); bounded
        by the stop's own bounds, and a failing stop is journaled, not raised."""
        self.close_startup()
        self._crashed(UnitState.STARTING)
        self._record(RecordKind.UNIT_EVENT, self.name, {"event": "start_failed", "cause": why})
        if self.alive():
            self.set_state(UnitState.STOPPING, f"{why}: ending the instance")
            try:
                await self.backend.stop(self.name, timeout_s=self._spec.stop_timeout_s)
            except VisorError as exc:  # (a StopError too)
                self._record(RecordKind.UNIT_EVENT, self.name, {"event": "stop_failed", "cause": exc.cause})
        if self._state in (UnitState.STARTING, UnitState.STOPPING):
            self.set_state(UnitState.EXITED, f"start failed: {why}")
            self._start_abandoned = True
        if self._exit is not None and not self._exit.done():
            self._exit.set_result({"start_failed": why})
        self._identity_changed(self.name, None)

    async def _wait_stable(self, start_s: float | None) -> str | None:
        hold = self._spec.start_s if start_s is None else start_s
        fut = self._exit
        if fut is None:
            return "was not started"
        try:
            detail = await within(self.clock, asyncio.shield(fut), hold) if hold > 0 else None
        except TimeoutError:
            detail = None
        ready = ""
        if detail is None and not fut.done() and self._state is UnitState.STARTING \
                and self._spec.startup_condition() is not None:
            # Until the start-up condition holds the unit stays STARTING: its probes run, and are not
            # judged (a database in crash recovery is not restarted for failing its liveness probe).
            problem = await self._await_startup(fut)
            if problem is not None:
                return problem
            ready = f"; start-up complete ({self._spec.startup_condition()})"
        if detail is None and fut.done():
            detail = fut.result()
        if detail is not None:
            if "start_failed" in detail:
                return f"start failed: {detail['start_failed']}"
            return f"died during start ({_describe_exit(detail)})"
        if not self.alive():
            return "not running after start"
        if self._state is UnitState.STARTING:
            self.set_state(UnitState.RUNNING, f"up for {hold:g}s{ready}")
        return None

    def fresh_instance(self, health: Health = Health.UNKNOWN) -> None:
        """The same process or VM now holds a new instance of the service (a restored or rebooted guest):
        the detectors forget the old one (failure streaks, trends), and the health says so."""
        self.set_health(health, "new instance")
        if self._on_fresh is not None:
            self._on_fresh(self.name)

    def alert(self, message: str, severity: Severity, data: Mapping[str, Any] | None = None) -> None:
        self._alert(self.name, message, severity, data or {})

    def journal_step(self, step: str, facts: Mapping[str, Any]) -> None:
        """Journal one step of the unit's running remedy as it ends (``remedy.step``: the remedy's
        ``action`` and ``remedy_id``, the ``step`` and its facts, e.g. ``took_s``)."""
        run = self.remedy
        self._record(RecordKind.REMEDY_STEP, self.name, {
            "action": run.action if run is not None else None,
            "remedy_id": run.remedy_id if run is not None else None, "step": step, **facts})

    def load_history(self, metric: str, since_mono: float) -> list[tuple[float, float]]:
        series = self.load.get(metric)
        if not series:
            return []
        return [(t, v) for t, v in series if t >= since_mono]

    # -- facts from the backend --------------------------------------------------------------------

    def on_exit(self, detail: Mapping[str, Any]) -> None:
        """The instance ended on its own (or while being stopped)."""
        self._crashed(self._state)
        if self._state in (UnitState.STARTING, UnitState.RUNNING, UnitState.STOPPING):
            self.set_state(UnitState.EXITED, _describe_exit(detail))
        if self._exit is not None and not self._exit.done():
            self._exit.set_result(detail)
        self.set_health(Health.UNKNOWN, "not running")
        self.close_startup()
        self._identity_changed(self.name, None)

    def adopted(self, identity: Identity) -> None:
        self._exit = asyncio.get_running_loop().create_future()
        self.set_state(UnitState.RUNNING, f"adopted pid {identity.pid} from an earlier supervisor")
        self.started_mono = self.clock.monotonic() - max(0.0, self.clock.wall() - identity.started_wall)
        self._running_since = self.started_mono  # it proved itself while the earlier supervisor watched

    def observe_load(self, mono: float, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            series = self.load.get(key)
            if series is None:
                series = self.load[key] = deque(maxlen=_LOAD_KEEP)
            series.append((mono, value))


def _budget(spec: UnitBase) -> RestartBudget:
    r = spec.restart
    return RestartBudget(r.backoff_first_s, r.backoff_factor, r.backoff_max_s, r.budget, r.window_s, r.reset_after_s)


def _describe_exit(detail: Mapping[str, Any]) -> str:
    s = describe_exit(detail)
    tail = detail.get("stderr_tail")
    if tail:
        s += f"; stderr: {tail[-1]}"
    return s

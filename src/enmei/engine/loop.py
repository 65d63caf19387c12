"""The engine: one asyncio loop that owns time, tasks and ordering.

Everything that happens reaches one queue and is handled in order, by one consumer::

    probe tasks ---- Observation --.
    backends ------- UnitEvent ----+--> queue --> detectors --> verdicts --> policy --> decisions
    remedy tasks --- Outcome ------+                                                       |
    tick task ------ Tick ---------+                          remedy tasks  <--------------'
    operators ------ Command ------'
    every step --> journal (D-Box)

Promises: a unit that dies is seen within one loop turn (the backend's exit watch), so well within 1 s;
a broken probe, detector, policy or remedy is journaled and never stops the loop; on ``stop()`` every
unit is stopped gracefully (or left running with ``leave_running``), the journal is flushed and closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from enmei.box.anchor import Anchors
from enmei.box.api import JournalWriter
from enmei.box.store import Journal
from enmei.clock import Clock, SystemClock
from enmei.config.load import LoadedConfig
from enmei.config.model import Config, UnitBase
from enmei.detect.unitset import UnitDetectors
from enmei.detect.wiring import unit_detectors
from enmei.engine.actions import inject, monitor, run_alert_command
from enmei.engine.alerts import AlertGate
from enmei.engine.deciding import DEFAULT_DEADLINE_S, Decider
from enmei.engine.host import HOST_BUDGET, HostRuntime
from enmei.engine.order import Order
from enmei.engine.reload import Reloader
from enmei.engine.remedies import RemedyRun
from enmei.engine.summary import Summaries
from enmei.engine.unit import UnitRuntime
from enmei.errors import EnmeiError
from enmei.model import (
    Decision,
    Event,
    Observation,
    Outcome,
    RecordKind,
    RemedyState,
    Severity,
    Tick,
    UnitEvent,
    UnitEventKind,
    UnitState,
    Verdict,
    VerdictKind,
    as_dict,
)
from enmei.monitor import make_probes
from enmei.monitor.base import Probe
from enmei.monitor.inject import make_injector
from enmei.monitor.rounds import ScheduleInjection, note_verdict
from enmei.policy.actions import HOST
from enmei.policy.actions import action as action_of
from enmei.policy.actions import known as known_actions
from enmei.policy.base import Policy, ReloadablePolicy, View
from enmei.policy.manager import load_default
from enmei.remedy.base import MAX_SECONDS
from enmei.remedy.budget import RestartBudget
from enmei.visor.base import Backend, Identity
from enmei.visor.registry import BackendContext, BackendFactory, make_backend
from enmei.visor.state import StateFile

__all__ = ["Command", "Engine", "Subscriber"]

log = logging.getLogger(__name__)

Subscriber = Callable[[int, str, str, Mapping[str, Any]], None]
JudgeFactory = Callable[[str, UnitBase], UnitDetectors | None]


@dataclass(frozen=True)
class Command:
    """An operator's request (ctl, CLI, web): run ``action`` on ``unit`` now, outside the policy, or
    ``reset`` it. ``reply``, if given, is resolved with what was done (see ``Engine.control``)."""

    action: str
    unit: str
    args: Mapping[str, Any]
    by: str = "operator"
    reply: asyncio.Future[dict[str, Any]] | None = field(default=None, compare=False, repr=False)
    preempted: Mapping[str, Any] | None = None  # the repair this command cancelled, for its record

#: what an operator may ask besides the remedies: forget the unit's budget, backoff and breakers
RESET = "reset"


class Engine:
    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        journal: JournalWriter,
        clock: Clock | None = None,
        policy: Policy | None = None,
        backends: Mapping[str, BackendFactory] | None = None,  # kind -> factory, over the registry's
        judge_factory: JudgeFactory | None = None,
        policy_deadline_s: float = DEFAULT_DEADLINE_S,
        host_budget: RestartBudget = HOST_BUDGET,
    ) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.clock: Clock = clock or SystemClock()
        self.journal = journal
        # No policy given: the one users get when they name none, the shipped library (not BuiltinPolicy,
        # which is only its fallback of last resort).
        self.policy: Policy = policy if policy is not None else load_default()
        self.alerts = AlertGate(self.clock, record=self.record, spawn=self.spawn,
                                runner=self._alert_command if self.config.supervisor.alert_command else None)
        self.decider = Decider(self.policy, record=self.record, execute=self._execute,
                               deadline_s=policy_deadline_s)
        self.state_dir = loaded.state_dir
        self.queue: asyncio.Queue[Event | Observation | Command] = asyncio.Queue()
        self.subscribers: list[Subscriber] = []
        # Called with every probe observation the engine handles (the metrics' histograms); must not block.
        self.observers: list[Callable[[Observation], None]] = []
        self._factories: dict[str, BackendFactory] = dict(backends or {})
        self._backends: dict[str, Backend] = {}
        self._judge_factory: JudgeFactory = judge_factory or unit_detectors
        self.units: dict[str, UnitRuntime] = {}
        self.host = HostRuntime(self.clock, backends=self._backends, units=self.units, alert=self.alert,
                                budget=host_budget)
        self.judges: dict[str, UnitDetectors] = {}  # each unit's detectors (none: nothing to judge)
        self._broken_detectors: set[tuple[str, str]] = set()
        self.probes: dict[str, list[Probe]] = {}
        self._identities: dict[str, Identity] = {}
        self._statefile = StateFile(self.state_dir / "units.json")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._remedy_tasks: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()
        self._leave_running = False
        self._summaries = Summaries()
        self._next_summary = 0.0
        self._outcome_seq: dict[str, int] = {}
        self.probe_intervals: dict[tuple[str, str], float] = {}
        self.injectors: dict[str, dict[str, Probe]] = {}
        self.started = asyncio.Event()
        self.handled = 0
        self._probe_tasks: dict[str, list[asyncio.Task[Any]]] = {}
        # Set once every autostart unit had its first start attempt (or was adopted): sd_notify READY=1.
        self.first_starts = asyncio.Event()
        self._first_pending: set[str] = set()
        self._progress_seen = -1
        # Order between units (``after``/``requires``, enmei.engine.order): starts that wait for their
        # dependencies (name -> (reason, rule)), units waiting for a required unit that is down (name ->
        # since, those), and dependents that exited meanwhile, started again once it is back.
        self._order: tuple[Config, Order] | None = None
        self._deferred: dict[str, tuple[str, str]] = {}
        self._waiting: dict[str, tuple[float, tuple[str, ...]]] = {}
        self._start_when_back: set[str] = set()
        self.reloader = Reloader(self)
        # ``enmei ctl upgrade`` (``enmei.engine.upgrade.Upgrader``), set by ``supervise``; None: not offered.
        self.upgrade: Any = None
        # Each probe's next due time (monotonic, (unit, probe) -> t): kept up to date by the probe loops and
        # handed to a successor (``enmei ctl upgrade``), whose loops start from ``probe_due`` instead of a
        # fresh interval, so a probe's schedule goes on across the handover.
        self.probe_next: dict[tuple[str, str], float] = {}
        self.probe_due: dict[tuple[str, str], float] = {}

    # -- public ------------------------------------------------------------------------------------

    def subscribe(self, fn: Subscriber) -> None:
        """Call ``fn(seq, kind, unit, body)`` for every journal record the engine writes."""
        self.subscribers.append(fn)

    def stop(self, *, leave_running: bool = False) -> None:
        """Ask the engine to finish: stop the units (or leave them running for adoption), then return."""
        self._leave_running = leave_running
        self._stopping.set()

    @property
    def stop_requested(self) -> asyncio.Event:
        """Set once ``stop()`` was called."""
        return self._stopping

    def progress(self) -> bool:
        """Whether the loop made progress since the last call: its queue is drained, or it handled
        something since (a stalled consumer says False; the sd_notify watchdog pings only on True)."""
        moved = self.handled != self._progress_seen or self.queue.empty()
        self._progress_seen = self.handled
        return moved

    def submit(self, action: str, unit: str, args: Mapping[str, Any] | None = None, by: str = "operator") -> None:
        """Queue an operator's request; it is journaled as a decision of ``by`` (``reset``: a reset record)."""
        self.queue.put_nowait(Command(action, unit, dict(args or {}), by))

    def control(self, action: str, unit: str, args: Mapping[str, Any] | None = None,
                by: str = "operator") -> asyncio.Future[dict[str, Any]]:
        """``submit``, with an answer: a future resolved once the command's remedy has ended (or at once when
        it was refused, or for ``reset``), with ``{"unit", "action", "by", "seq", "preempted", "rejected",
        "suppressed", "outcome", "cleared"}`` (the decision or reset record's seq; the repair it cancelled;
        why it was refused; the remedy's end state and detail). Never raises into the loop."""
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(Command(action, unit, dict(args or {}), by, reply))
        return reply

    def view(self) -> View:
        now = self.clock.monotonic()
        return View(now, {name: u.view(now) for name, u in self.units.items()})

    def record(self, kind: str, unit: str | None, body: Mapping[str, Any]) -> int:
        """Journal one record and tell the subscribers."""
        seq = self.journal.append(kind, unit, body)
        for fn in self.subscribers:
            try:
                fn(seq, kind, unit or "", body)
            except Exception:  # a broken display must not break supervision
                log.exception("subscriber failed")
        return seq

    async def run(self) -> None:
        """Supervise until ``stop()``. Returns after the units are stopped and the journal flushed."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        def trouble(err: str | None) -> None:  # called from the journal's writer thread
            loop.call_soon_threadsafe(self._journal_trouble, err)

        self.journal.on_trouble = trouble
        self.record(RecordKind.SUPERVISOR, None, {
            "event": "started", "pid": os.getpid(), "config": str(self.loaded.path),
            "config_sha256": self.loaded.sha256, "units": sorted(self.config.units),
            "policy": self.policy.version,
        })
        self._policy_notices()
        self._build_units()
        await self._adopt_or_start()
        self.spawn(self._tick_loop(), "tick")
        for name in self.units:
            self._spawn_probes(name)
        self.started.set()
        consumer = asyncio.create_task(self._consume(), name="enmei-consumer")
        stopper = asyncio.create_task(self._stopping.wait())
        try:
            done, _ = await asyncio.wait({consumer, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if consumer in done:
                consumer.result()  # re-raise a crash of the consumer itself
        finally:
            consumer.cancel()
            stopper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
            await self._shutdown()

    # -- building ----------------------------------------------------------------------------------

    def backend(self, kind: str) -> Backend:
        """The backend for units of ``kind``, made on first use by its registered factory (or the one
        given to the engine for that kind). Raises ``UnknownBackendError`` for a kind nobody registered."""
        b = self._backends.get(kind)
        if b is None:
            ctx = BackendContext(clock=self.clock, state_dir=self.state_dir, base_dir=self.loaded.base_dir,
                                 emit=self.emit, verdict=self.emit_verdict)
            factory = self._factories.get(kind)
            b = self._backends[kind] = factory(ctx) if factory is not None else make_backend(kind, ctx)
        return b

    def _build_units(self) -> None:
        for name, spec in self.config.units.items():
            self._build_unit(name, spec)

    def _build_unit(self, name: str, spec: UnitBase) -> UnitRuntime:
        backend = self.backend(spec.backend)
        unit = UnitRuntime(name, spec, backend, self.clock, record=self.record, alert=self.alert,
                           identity_changed=self._identity_changed, on_fresh=self._fresh_instance,
                           notify_dir=self.state_dir / "notify")
        self.units[name] = unit
        self._build_watch(name, spec)
        return unit

    def _build_watch(self, name: str, spec: UnitBase) -> None:
        """The unit's probes, injectors and detectors, made from ``spec`` (their loops are not started)."""
        backend = self.units[name].backend
        self.probes[name] = make_probes(name, spec, backend, self.clock)
        self.injectors[name] = {i.name: make_injector(name, i, self.clock, backend) for i in spec.injectors}
        judge = self._judge_factory(name, spec)
        self.judges.pop(name, None)
        if judge is not None and len(judge):
            self.judges[name] = judge

    def _spawn_probes(self, name: str) -> None:
        self._probe_tasks[name] = [self.spawn(self._probe_loop(self.units[name], probe), f"probe {name}/{probe.name}")
                                   for probe in self.probes.get(name, [])]
        # injectors that run rounds of their own (a typing schedule): monitor work, ended with the probes
        self._probe_tasks[name] += [self.spawn(self._rounds(self.units[name], inj), f"rounds {name}/{inj.name}")
                                    for inj in self.injectors.get(name, {}).values()
                                    if isinstance(inj, ScheduleInjection)]

    async def _rounds(self, unit: UnitRuntime, inj: ScheduleInjection) -> None:
        """The schedule's rounds: only while the unit runs unrepaired and enmei is not stopping; every
        slot and round journaled as an ``injection`` record."""

        def gate() -> str | None:
            if self._stopping.is_set():
                return "enmei is stopping"
            if unit.state is not UnitState.RUNNING or not unit.alive():
                return f"the unit is {unit.state}"
            if unit.remedy is not None:
                return "a remedy runs on the unit"
            return None

        def record(kind: str, detail: Mapping[str, Any]) -> None:
            self.record(RecordKind.INJECTION, unit.name, {"event": kind, "injector": inj.name, **detail})

        await inj.run(gate, self.queue.put_nowait, record)

    async def _drop_watch(self, name: str) -> None:
        """End the unit's probe loops and close its probes (its detectors and injectors are forgotten)."""
        tasks = self._probe_tasks.pop(name, [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for probe in self.probes.pop(name, []):
            with contextlib.suppress(Exception):
                await probe.aclose()
        self.injectors.pop(name, None)
        self.judges.pop(name, None)
        self._broken_detectors = {k for k in self._broken_detectors if k[0] != name}
        for key in [k for k in self.probe_intervals if k[0] == name]:
            del self.probe_intervals[key]
        for key in [k for k in self.probe_next if k[0] == name]:
            del self.probe_next[key]

    # -- the unit set, changed live (reload: enmei.engine.reload) ----------------------------------

    def request_reload(self, by: str = "operator") -> dict[str, Any]:
        """Re-read the config file and apply what changed, unit by unit (``enmei.engine.reload``): the
        diff (``ok`` True, applied by a task) or the error (``ok`` False: the old config stays in force),
        journaled as a ``reload`` record either way. Refused while enmei is starting or stopping."""
        if not self.started.is_set() or self._stopping.is_set():
            body: dict[str, Any] = {"event": "refused", "by": by, "ok": False,
                                    "error": "enmei is starting or stopping: no reload now"}
            self.record(RecordKind.RELOAD, None, body)
            return body
        return self.reloader.request(by)

    async def _release(self, unit: UnitRuntime, reason: str) -> None:
        """Cancel the unit's running remedy (its outcome says ``reason``) and wait until it let go."""
        run = unit.remedy
        if run is not None and run.task is not None and run.cancel("reload", reason):
            await asyncio.gather(run.task, return_exceptions=True)

    async def remove_unit(self, name: str, reason: str) -> None:
        """Stop the unit (its running remedy cancelled first) and forget it; its record says ``reason``."""
        unit = self.units[name]
        self.record(RecordKind.UNIT_EVENT, name, {"event": "removed", "reason": reason})
        await self._drop_watch(name)
        await self._release(unit, reason)
        try:
            await unit.stop()
        finally:
            unit.close_startup()
            self.units.pop(name, None)
            self._identity_changed(name, None)
            unit.backend.forget(name)

    async def replace_unit(self, name: str, spec: UnitBase, reason: str) -> None:
        """Stop the unit with its old spec, then build it anew with ``spec`` and start it (if autostart)."""
        unit = self.units[name]
        self.record(RecordKind.UNIT_EVENT, name, {"event": "reconfigured", "how": "restart", "reason": reason})
        await self._drop_watch(name)
        await self._release(unit, reason)
        try:
            await unit.stop()
        finally:
            unit.close_startup()
        self._identity_changed(name, None)
        self._build_unit(name, spec)
        self._begin(name, reason)

    def update_unit(self, name: str, spec: UnitBase, reason: str) -> None:
        """Give the running unit ``spec``: its probes, injectors, detectors and budget are made anew from
        it; the instance (and its restart history) stays."""
        unit = self.units[name]
        self.record(RecordKind.UNIT_EVENT, name, {"event": "reconfigured", "how": "in_place", "reason": reason})
        old = self._probe_tasks.pop(name, [])
        closing = self.probes.get(name, [])
        for task in old:
            task.cancel()

        async def close_old() -> None:
            await asyncio.gather(*old, return_exceptions=True)
            for probe in closing:
                with contextlib.suppress(Exception):
                    await probe.aclose()

        self.spawn(close_old(), f"close old probes of {name}")
        unit.respec(spec)
        self._build_watch(name, spec)
        self._spawn_probes(name)

    def add_unit(self, name: str, spec: UnitBase, reason: str) -> None:
        """Build the unit from ``spec`` and start it if it is autostart (else it is STOPPED)."""
        self._build_unit(name, spec)
        self.record(RecordKind.UNIT_EVENT, name, {"event": "added", "reason": reason})
        self._begin(name, reason)

    def _begin(self, name: str, reason: str) -> None:
        self._spawn_probes(name)
        unit = self.units[name]
        if unit.spec.autostart:
            self._start_in_order(name, reason, "reload")
        else:
            unit.set_state(UnitState.STOPPED, "autostart = false")

    async def _adopt_or_start(self) -> None:
        saved = self._statefile.load()
        self._identities = {}
        for name, ident in saved.items():
            unit = self.units.get(name)
            if unit is None:
                self.record(RecordKind.ALERT, name, {
                    "severity": "warning", "message": f"unit {name} (pid {ident.pid}) was left running by an "
                    "earlier supervisor but is not in the config any more: not adopted, not stopped"})
                continue
            if ident.backend == unit.backend.kind and await unit.backend.adopt(name, unit.spec, ident):
                # The backend may adopt another instance than the saved one (an interrupted handover's).
                adopted = unit.backend.identity(name) or ident
                self._identities[name] = adopted
                unit.adopted(adopted)
        for name, unit in self.units.items():
            if unit.state is UnitState.PENDING:
                found = await unit.backend.recover(name, unit.spec)
                if found is not None:
                    self._identities[name] = found
                    unit.adopted(found)
                    self.record(RecordKind.UNIT_EVENT, name, {
                        "event": "recovered", "pid": found.pid,
                        "duplicates_ended": list(found.extra.get("duplicates_ended", []))})
        self._save_identities()
        await self._resolve_interrupted()
        for name, unit in self.units.items():
            if unit.state is UnitState.PENDING:
                if unit.spec.autostart:
                    self._first_pending.add(name)
                    self._start_in_order(name, "autostart", "autostart")
                    if unit.remedy is None and name not in self._deferred:
                        self._first_pending.discard(name)  # refused: there is no attempt to wait for
                else:
                    unit.set_state(UnitState.STOPPED, "autostart = false")
        self._release_ordered()  # a start waiting only for units that are not going to start
        self._first_attempted(None)

    def _first_attempted(self, name: str | None) -> None:
        if name is not None:
            self._first_pending.discard(name)
        if not self._first_pending:
            self.first_starts.set()

    # -- order between units (after / requires: enmei.engine.order) --------------------------------

    @property
    def order(self) -> Order:
        """The dependency graph of the config in force (rebuilt when a reload changes it)."""
        if self._order is None or self._order[0] is not self.config:
            self._order = (self.config, Order.of(self.config.units))
        return self._order[1]

    def _start_in_order(self, name: str, reason: str, rule: str) -> None:
        """Start the unit now, or once the units it is after are up (journaled: waiting for them)."""
        waits = self.order.blocking_start(name, self.units, self._attempted())
        if not waits:
            self._execute(Decision("start", name, reason, policy="engine", rule=rule), None)
            return
        self._deferred[name] = (reason, rule)
        self.record(RecordKind.UNIT_EVENT, name, {
            "event": "waiting", "for": waits, "cause": f"waiting for {', '.join(waits)} to start first (after)"})

    def _attempted(self) -> set[str]:
        """Units whose first start attempt is over (or that never had one to make)."""
        return {n for n in self.units if n not in self._first_pending and n not in self._deferred}

    def _release_ordered(self) -> None:
        """Start what waited for its dependencies and may start now; start again the dependents that
        exited while a unit they require was down, once it is back. Nothing once enmei is stopping."""
        if self._stopping.is_set():
            return
        for name, (reason, rule) in list(self._deferred.items()):
            unit = self.units.get(name)
            if unit is None or unit.state is not UnitState.PENDING:
                self._deferred.pop(name, None)  # removed, or started by an operator meanwhile
                if name in self._first_pending:
                    self._first_attempted(name)
                continue
            waits = self.order.blocking_start(name, self.units, self._attempted())
            if not waits:
                del self._deferred[name]
                self._execute(Decision("start", name, f"{reason}; after {', '.join(self.order.after[name])}",
                                       policy="engine", rule=rule), None)
                if unit.remedy is None:
                    self._first_attempted(name)
            elif name in self._first_pending and all(
                    d in self._attempted() and self.units[d].state is not UnitState.STARTING and
                    not self.units[d].busy for d in waits):
                # What it requires had its first attempt and is down: its own first attempt is to wait
                # (enmei is ready; it starts once they are up).
                self.record(RecordKind.UNIT_EVENT, name, {
                    "event": "waiting", "for": waits,
                    "cause": f"not started: requires {', '.join(waits)}, which is not running"})
                self._first_attempted(name)
        for name in list(self._start_when_back):
            unit = self.units.get(name)
            if unit is None or unit.state is not UnitState.STOPPED or unit.busy:
                if unit is None or unit.state is not UnitState.STOPPED:
                    self._start_when_back.discard(name)  # gone, or started by someone meanwhile
                continue
            if not self.order.down_required(name, self.units):
                self._start_when_back.discard(name)
                back = ", ".join(self.order.requires.get(name, ()))
                self._execute(Decision("start", name, f"exited while {back} was down; {back} is running again",
                                       policy="engine", rule="requires"), None)

    def _blame_elsewhere(self, unit: UnitRuntime, what: str) -> bool:
        """Whether a unit it requires is down (then ``what`` — its probe failures, its exit — is that
        unit's doing: journaled once as waiting for it); a unit that waited and whose dependencies are
        back resumes (journaled; its detectors start over)."""
        down = tuple(self.order.down_required(unit.name, self.units))
        name = unit.name
        if down:
            since, before = self._waiting.get(name, (self.clock.monotonic(), ()))
            if before != down:
                self._waiting[name] = (since, down)
                self.record(RecordKind.UNIT_EVENT, name, {
                    "event": "waiting", "for": list(down),
                    "cause": f"waiting for {', '.join(down)}: {what} not held against {name}"})
                judge = self.judges.get(name)
                if judge is not None:
                    judge.reset()
            return True
        if name in self._waiting:
            since, before = self._waiting.pop(name)
            self.record(RecordKind.UNIT_EVENT, name, {
                "event": "resumed", "for": list(before), "waited_s": round(self.clock.monotonic() - since, 3)})
            judge = self.judges.get(name)
            if judge is not None:
                judge.reset()  # failures seen while it waited are not half a streak now
        return False

    async def _resolve_interrupted(self) -> None:
        """Journal remedies whose intent was written but whose outcome never was (a supervisor crash)."""
        from enmei.box.readers import interrupted_of

        for rec in await asyncio.to_thread(interrupted_of, self.journal):
            unit = self.units.get(rec["unit"])
            self.record(RecordKind.REMEDY_OUTCOME, rec["unit"], {
                "remedy_id": rec["remedy_id"], "action": rec["action"], "state": str(RemedyState.CANCELLED),
                "detail": "interrupted by a supervisor restart; not repeated",
                "unit_alive": bool(unit and unit.alive()), "started_seq": rec["seq"]})

    # -- the loop ----------------------------------------------------------------------------------

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the engine owns (cancelled at shutdown)."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def emit(self, event: UnitEvent) -> None:
        """Where backends report facts about units (thread-unsafe: call from the loop)."""
        self.queue.put_nowait(event)

    def emit_verdict(self, verdict: Verdict) -> None:
        """Where backends report their own judgements (a guest's panic)."""
        self.queue.put_nowait(verdict)

    async def _consume(self) -> None:
        while True:
            item = await self.queue.get()
            try:
                self._handle(item)
            except Exception:  # one bad event must not end supervision
                log.exception("handling %r failed", item)
                with contextlib.suppress(Exception):
                    self.record(RecordKind.ALERT, getattr(item, "unit", None),
                                {"severity": "critical", "message": f"internal error handling {type(item).__name__}"})
            self.handled += 1

    def _handle(self, item: Event | Observation | Command) -> None:
        if isinstance(item, Observation):
            self._on_observation(item)
        elif isinstance(item, UnitEvent):
            self._on_unit_event(item)
        elif isinstance(item, Outcome):
            self._decide(item, self._outcome_seq.pop(item.remedy_id, None))
        elif isinstance(item, Verdict):
            seq = self.record(RecordKind.VERDICT, item.unit, as_dict(item))
            self._decide(item, seq)
        elif isinstance(item, Tick):
            self._on_tick(item)
        elif isinstance(item, Command):
            self._on_command(item)

    def _on_unit_event(self, ev: UnitEvent) -> None:
        seq = self.record(RecordKind.UNIT_EVENT, ev.unit, {"event": str(ev.kind), "mono": ev.mono, **ev.detail})
        unit = self.units.get(ev.unit)
        if unit is None:
            return
        if ev.kind is UnitEventKind.EXITED:
            unit.on_exit(ev.detail)
            if unit.remedy is None:
                if self._blame_elsewhere(unit, "its exit is"):
                    # Stopped, not exited: nothing (a policy's tick) restarts it into a dead dependency;
                    # it is started again once what it requires is back, not counted as a restart.
                    waits = ", ".join(self._waiting[ev.unit][1])
                    unit.set_state(UnitState.STOPPED, f"waiting for {waits}: started again once running")
                    self._start_when_back.add(ev.unit)
                else:
                    self._decide(ev, seq)
        elif ev.kind is UnitEventKind.STOPPED:
            self._identity_changed(ev.unit, None)
        elif ev.kind is UnitEventKind.STARTED:
            judge = self.judges.get(ev.unit)
            if judge is not None:
                judge.reset()  # a new instance (also one a backend made by itself): streaks, trends start over
            # A backend may replace the instance by itself (a VM's warm standby taking over in a phase
            # reboot, a whole-state restore): the saved identity must name the running one, for adoption.
            identity = unit.backend.identity(ev.unit)
            if identity is not None and identity != self._identities.get(ev.unit):
                self._identity_changed(ev.unit, identity)

    def _on_observation(self, obs: Observation) -> None:
        unit = self.units.get(obs.unit)
        if unit is None:
            return
        self._summaries.add(obs)
        wall = obs.wall
        rows = [(obs.unit, f"{obs.probe}.{k}", wall, float(v)) for k, v in obs.values.items()]
        rows.append((obs.unit, f"{obs.probe}.ok", wall, 1.0 if obs.ok else 0.0))
        self.journal.add_samples(rows)
        for fn in self.observers:
            try:
                fn(obs)
            except Exception:  # a broken display must not break supervision
                log.exception("observer failed")
        unit.observe_load(obs.mono, obs.values)
        if unit.state is UnitState.STARTING and obs.ok:
            unit.probe_passed(obs.probe, obs.mono)  # the start-up probe's pass completes the start-up
        if unit.state is not UnitState.RUNNING or unit.remedy is not None:
            return  # a unit starting or under repair is not judged
        if self._blame_elsewhere(unit, "its probe failures are"):
            return
        detectors = self.judges.get(obs.unit)
        if detectors is None:
            return
        # The detectors judge (verdicts, health); the engine only applies what they concluded.
        judged = detectors.feed(obs)
        for name, error in judged.failed:  # journaled once per detector: a bug, not an event stream
            if (obs.unit, name) not in self._broken_detectors:
                self._broken_detectors.add((obs.unit, name))
                self.record(RecordKind.ALERT, obs.unit, {
                    "severity": "warning", "message": f"detector {name} failed and is skipped when it fails: {error}",
                    "detector": name})
        if judged.health is not None:
            unit.set_health(*judged.health)
        for v in judged.verdicts:
            seq = self.record(RecordKind.VERDICT, v.unit, as_dict(v))
            note_verdict(self.injectors.get(v.unit, {}), v)  # a typing schedule's round ends at its verdict
            if v.kind is VerdictKind.PROBE_RECOVERED:
                continue
            self._decide(v, seq)

    def _on_tick(self, tick: Tick) -> None:
        for backend in self._backends.values():
            try:
                backend.maintain()
            except Exception:
                log.exception("backend %s housekeeping failed", backend.kind)
        self.alerts.flush()  # the alerts coalesced in the window that ended, as one counted record
        if tick.mono >= self._next_summary:
            if self._next_summary:
                for unit, body in self._summaries.drain(tick.mono):
                    self.record(RecordKind.SAMPLES, unit, body)
            else:
                self._summaries.drain(tick.mono)
            self._next_summary = tick.mono + self.config.supervisor.summary_every_s
        try:
            self.decider.reload()  # hot reload: one stat per tick (in the policy's worker, if it has one)
        except Exception:
            log.exception("policy reload check failed")
        self._release_ordered()
        self._decide(tick, None)

    def _policy_notices(self, notices: list[dict[str, Any]] | None = None) -> None:
        """Journal what a file policy reports: loaded, reloaded, rejected (file:line:column), error."""
        if not isinstance(self.policy, ReloadablePolicy):
            return
        for n in self.policy.drain_notices() if notices is None else notices:
            self.record(RecordKind.POLICY, n.get("unit"), n)

    def _on_command(self, cmd: Command) -> None:
        """An operator's stop, start or restart overrides a running repair (a restart waiting out a long
        delay, an escalation's slow retry, the policy's own start): the repair is cancelled — its outcome
        record says by whom and for what — and the command carried out once the cancelled one has let go
        of the unit; the command's decision record names the repair it pre-empted. ``reset`` clears the
        unit's budget, backoff and breakers (``_reset``). Any other command is refused while a repair
        runs, on the record and in its reply (never silently)."""
        try:
            if cmd.action == RESET:
                answer = self._reset(cmd)
            elif self._preempt(cmd):
                return  # carried out (and answered) once the repair has let go of the unit
            else:
                body = self._execute(Decision(cmd.action, cmd.unit, f"requested by {cmd.by}", cmd.args,
                                              policy=cmd.by, rule="manual"), None, preempted=cmd.preempted)
                answer = {k: body.get(k) for k in ("seq", "rejected", "suppressed")}
                answer["preempted"] = cmd.preempted
                unit = self.units.get(cmd.unit)
                run = unit.remedy if unit is not None else None
                if cmd.reply is not None and run is not None and run.task is not None and \
                        run.decision_seq == answer["seq"]:
                    # Answered when the remedy ends (a stop has stopped), with its outcome.
                    run.task.add_done_callback(lambda t: _answer(cmd, {**answer, "outcome": _outcome_of(t)}))
                    return
        except Exception as exc:  # the answer must come, even when carrying out failed
            _answer(cmd, {"rejected": f"internal error: {type(exc).__name__}: {exc}"})
            raise
        _answer(cmd, answer)

    def _preempt(self, cmd: Command) -> bool:
        """Cancel the unit's running repair for an operator's stop/start/restart and run ``cmd`` once it has
        ended; False if nothing needs pre-empting."""
        unit = self.units.get(cmd.unit)
        run = unit.remedy if unit is not None else None
        if run is None or cmd.action not in _OVERRIDES or run.task is None or run.task.done():
            return False
        why = f"pre-empted by {cmd.by}: {cmd.action} requested"
        if not run.cancel(cmd.by, why):
            return False
        log.info("unit %s: %s cancels remedy %s (%s)", cmd.unit, cmd.by, run.remedy_id, run.action)
        again = replace(cmd, preempted={"remedy_id": run.remedy_id, "action": run.action,
                                        "decision_seq": run.decision_seq, "by": cmd.by})
        run.task.add_done_callback(lambda _: self.queue.put_nowait(again))
        return True

    def _reset(self, cmd: Command) -> dict[str, Any]:
        """``reset UNIT``: the restart budget's restarts and the backoff streaks are forgotten, the shipped
        policy's breakers close (they count failures after ``last_reset`` only), a running escalation or
        restart is cancelled, and a unit left down by them (exited, backing off, escalated) is started at
        once by the operator. A stopped unit stays stopped. Journaled as one ``unit.reset`` record."""
        unit = self.units.get(cmd.unit)
        if unit is None:
            known = ", ".join(sorted(self.units)) or "none"
            return {"rejected": f"no unit named {cmd.unit!r} (units: {known})"}
        now = self.clock.monotonic()
        body: dict[str, Any] = {"by": cmd.by, "cleared": unit.reset(now), "last_reset": now,
                                "state": str(unit.state)}
        run = unit.remedy
        cancelled = None
        if run is not None and run.action in ("escalate", "restart", "start") and \
                run.cancel(cmd.by, f"pre-empted by {cmd.by}: reset requested"):
            cancelled = {"remedy_id": run.remedy_id, "action": run.action, "decision_seq": run.decision_seq,
                         "by": cmd.by}
        body["cancelled"] = cancelled
        down = unit.state in (UnitState.EXITED, UnitState.BACKOFF, UnitState.ESCALATED) and not unit.alive()
        # (another repair still running, a rejuvenation say, brings the unit back itself: left alone)
        body["start"] = (down and run is None) or (cancelled is not None and unit.state is not UnitState.STOPPED)
        seq = self.record(RecordKind.RESET, unit.name, body)
        if body["start"]:
            start = Command("start", unit.name, {}, cmd.by, preempted=cancelled)
            if cancelled is not None and run is not None and run.task is not None:
                run.task.add_done_callback(lambda _: self.queue.put_nowait(start))
            else:
                self.queue.put_nowait(start)
        return {"seq": seq, "cleared": body["cleared"], "preempted": cancelled, "start": body["start"]}

    # -- policy and remedies -----------------------------------------------------------------------

    def _decide(self, event: Event, cause_seq: int | None) -> None:
        """Have the policy decide ``event`` (off the loop for a sandboxed policy, with a deadline and a
        fallback: ``enmei.engine.deciding``); the decisions are carried out in event order."""
        self.decider.decide(event, self.view(), cause_seq)

    def _execute(self, d: Decision, cause_seq: int | None, view: View | None = None, *,
                 preempted: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Journal decision ``d`` and carry it out: an engine action at once, a remedy as a task.

        Whoever made it (a policy, the fallback, an operator), the decision is checked against the one
        action vocabulary (``enmei.policy.actions``: name, scope, argument types and bounds) and refused,
        on the record, when it does not fit; one remedy runs per unit at a time. The restart budget is
        enforced here on every action that counts as a restart: a policy's restart of a unit whose
        budget is spent is refused and the unit escalated instead (alert, slow retries), and an escalation
        waits at least the configured ``escalate.retry_every_s``. An operator's command is counted in
        the budget but not refused by it (an operator may always restart a unit by hand).

        Returns the decision's record body (with ``seq`` once it was carried out); ``preempted`` names the
        repair an operator's command cancelled, for that record.
        """
        body: dict[str, Any] = {"action": d.action, "reason": d.reason, "args": dict(d.args), "policy": d.policy,
                                "rule": d.rule, "cause_seq": cause_seq, "not_before": d.not_before}
        if preempted is not None:
            body["preempted"] = dict(preempted)
        if view is not None and d.unit in view.units:
            # The evidence the policy saw: replay feeds the same event and view to another policy.
            body["view"] = view.units[d.unit].as_dict()
            body["now"] = view.now
        if d.unit == HOST:
            self._execute_host(d, body)
            return body
        unit = self.units.get(d.unit)
        act = action_of(d.action)
        problem: str | None = None
        if unit is None:
            problem = f"no unit named {d.unit!r}"
        elif act is None:
            problem = f"no remedy named {d.action!r} (known: {', '.join(known_actions())})"
        elif act.scope != "unit":
            problem = f"{d.action} acts on the host, not on a unit"
        elif act.engine:
            problem = act.check_args(d.args)
            if problem is None and d.action == "alert":
                seq = self.record(RecordKind.DECISION, d.unit, body)
                self.alert(d.unit, d.reason, Severity(str(d.args.get("severity", "warning"))),
                           {"decision_seq": seq})
                return body
            if problem is None and d.action == "none":
                self.record(RecordKind.DECISION, d.unit, body)
                return body
            if problem is None:
                problem = monitor(self, unit, d.args) if d.action == "monitor" else inject(self, unit, d.args)
                if problem is None:
                    self.record(RecordKind.DECISION, d.unit, body)
                    return body
        elif act.remedy is not None and (
                refused := act.remedy.refusal(unit.backend.capabilities, unit.backend.kind)) is not None:
            problem = refused
        else:
            problem = act.check_args(d.args)
        if problem is None:
            problem = self._check_not_before(d.not_before)
        if problem is not None:
            body["rejected"] = problem
            self.record(RecordKind.DECISION, d.unit, body)
            log.warning("decision rejected: %s", problem)
            return body
        assert unit is not None
        assert act is not None
        assert act.remedy is not None
        if unit.remedy is not None:
            body["suppressed"] = f"remedy {unit.remedy.remedy_id} ({unit.remedy.action}) is running"
            if _by_operator(d):
                body["suppressed"] += "; an operator's stop, start or restart pre-empts it"
            self.record(RecordKind.DECISION, d.unit, body)
            return body
        now = self.clock.monotonic()
        counted = act.counts_as_restart or (d.action == "start" and unit.state is UnitState.EXITED
                                            and d.rule != "autostart")
        args = dict(d.args)
        if counted and not _by_operator(d) and unit.budget.spent(unit.restarts, now):
            spent = (f"restart budget spent ({unit.budget.in_window(unit.restarts, now)} restarts in "
                     f"{unit.budget.window_s:g}s, budget {unit.budget.budget})")
            if d.action != "escalate":
                body["rejected"] = f"{spent}: {d.action} refused by the engine; escalated instead"
                seq = self.record(RecordKind.DECISION, d.unit, body)
                why = f"{spent}; {d.policy} asked for {d.action}: {d.reason}"
                self._execute(Decision("escalate", d.unit, why,
                                       {"retry_in_s": unit.spec.escalate.retry_every_s, "why": why},
                                       policy="engine", rule="budget-enforced"), seq)
                return body
            floor = float(unit.spec.escalate.retry_every_s)
            if float(args.get("retry_in_s", floor)) < floor:
                args["retry_in_s"] = floor
                body["args"] = dict(args)
                body["budget"] = f"{spent}: retry_in_s raised to escalate.retry_every_s = {floor:g}"
        if counted and not act.counts_as_restart:
            body["counted_as_restart"] = True
        seq = self.record(RecordKind.DECISION, d.unit, body)
        run = RemedyRun(f"{d.unit}-{seq}", act.remedy(), unit, args, seq, d.not_before)
        unit.remedy = run
        if counted:
            unit.restarts.append(now)
            if d.action == "restart" and unit.alive() and not _by_operator(d):
                unit.probe_restarted()  # a restart of a unit that is up: its own backoff streak
        self._start_remedy(unit, run)
        return {**body, "seq": seq}

    def _execute_host(self, d: Decision, body: dict[str, Any]) -> None:
        """A decision on the host: the same checks, journal records, deadline and one-at-a-time rule as a
        unit's remedy; the host's budget refuses a restart-like remedy once spent (with an alert)."""
        host = self.host
        act = action_of(d.action)
        problem: str | None = None
        if act is None:
            problem = f"no remedy named {d.action!r} (known: {', '.join(known_actions())})"
        elif act.scope != "host" or act.remedy is None:
            problem = f"{d.action} acts on a unit, not on {HOST}"
        else:
            problem = act.check_args(d.args) or self._check_not_before(d.not_before)
        if problem is None and act is not None and act.counts_as_restart and \
                host.budget.spent(host.restarts, self.clock.monotonic()):
            problem = (f"host restart budget spent ({host.budget.in_window(host.restarts, self.clock.monotonic())} "
                       f"in {host.budget.window_s:g}s, budget {host.budget.budget})")
            self.alert(None, f"{d.action} on the host refused: {problem}", Severity.CRITICAL,
                       {"action": d.action, "policy": d.policy})
        if problem is not None:
            body["rejected"] = problem
            self.record(RecordKind.DECISION, HOST, body)
            log.warning("decision rejected: %s", problem)
            return
        assert act is not None
        assert act.remedy is not None
        if host.remedy is not None:
            body["suppressed"] = f"remedy {host.remedy.remedy_id} ({host.remedy.action}) is running"
            self.record(RecordKind.DECISION, HOST, body)
            return
        seq = self.record(RecordKind.DECISION, HOST, body)
        run = RemedyRun(f"host-{seq}", act.remedy(), host, dict(d.args), seq, d.not_before)
        host.remedy = run
        if act.counts_as_restart:
            host.restarts.append(self.clock.monotonic())
        self._start_remedy(host, run)

    def _start_remedy(self, owner: UnitRuntime | HostRuntime, run: RemedyRun) -> None:
        task = asyncio.create_task(self._run_remedy(owner, run), name=f"remedy {run.remedy_id}")
        run.task = task
        self._remedy_tasks.add(task)
        task.add_done_callback(self._remedy_tasks.discard)

    def _check_not_before(self, not_before: float | None) -> str | None:
        if not_before is None:
            return None
        if not math.isfinite(not_before) or not_before - self.clock.monotonic() > MAX_SECONDS:
            return f"not before {not_before!r}: a decision may wait at most {MAX_SECONDS:g}s (a day)"
        return None

    def _fresh_instance(self, name: str) -> None:
        judge = self.judges.get(name)
        if judge is not None:
            judge.reset()

    async def _intent(self, run: RemedyRun) -> None:
        self.record(RecordKind.REMEDY_START, run.unit.name, {
            "remedy_id": run.remedy_id, "action": run.action, "args": dict(run.args),
            "decision_seq": run.decision_seq, "deadline_s": run.deadline_s()})
        if self.journal.status == "ok":
            # The intent is made durable before acting. While the journal cannot be written (disk full),
            # repair does not wait for it: the intent stays queued in order, and an alert is out.
            await self.journal.aflush(timeout_s=5.0)

    async def _run_remedy(self, unit: UnitRuntime | HostRuntime, run: RemedyRun) -> Outcome:
        try:
            outcome = await run.execute(self._intent)
        finally:
            if unit.remedy is run:
                unit.remedy = None
        seq = self.record(RecordKind.REMEDY_OUTCOME, unit.name, {
            **as_dict(outcome), "decision_seq": run.decision_seq, "duration_s": round(outcome.duration_s, 4),
            "unit_state": str(unit.state)})
        if unit.name in self._first_pending:
            self._first_attempted(unit.name)
        self._release_ordered()  # a dependency may be up (or settled down) now
        if outcome.state is not RemedyState.CANCELLED:
            self._outcome_seq[run.remedy_id] = seq
            self.queue.put_nowait(outcome)
        return outcome

    # -- alerts, identities, journal trouble -------------------------------------------------------

    def alert(self, unit: str | None, message: str, severity: Severity, data: Mapping[str, Any]) -> None:
        """Raise an alert: journaled, logged, and sent to ``alert_command`` if one is configured, within
        the bounds of ``enmei.engine.alerts`` (rate per source, coalescing, a counted drop, at most two
        alert commands at once)."""
        source = "policy" if "decision_seq" in data else "engine"
        self.alerts.alert(unit, message, severity, data, source)

    async def _alert_command(self, payload: Mapping[str, Any]) -> str | None:
        cmd = self.config.supervisor.alert_command
        if not cmd:
            return None
        return await run_alert_command(cmd, payload, self.loaded.base_dir)

    def _identity_changed(self, name: str, identity: Identity | None) -> None:
        if identity is None:
            if self._identities.pop(name, None) is None:
                return
        else:
            self._identities[name] = identity
        self._save_identities()

    def _save_identities(self) -> None:
        try:
            self._statefile.save(self._identities)
        except OSError as exc:
            log.error("cannot save unit state: %s", exc)

    def _journal_trouble(self, error: str | None) -> None:
        if error:
            self.alert(None, f"journal cannot be written ({error}); records are kept in memory until it can",
                       Severity.CRITICAL, {"journal": str(self.journal.path)})
        else:
            self.alert(None, "journal is being written again", Severity.INFO, {"journal": str(self.journal.path)})

    # -- periodic tasks ----------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        period = self.config.supervisor.tick_s
        while True:
            await self.clock.sleep(period)
            self.queue.put_nowait(Tick(self.clock.monotonic(), self.clock.wall()))

    async def _probe_loop(self, unit: UnitRuntime, probe: Probe) -> None:
        clock = self.clock
        key = (unit.name, probe.name)
        fresh = clock.monotonic() + probe.interval_s
        next_at = min(self.probe_due.pop(key, fresh), fresh)  # an overdue one runs at once
        while True:
            self.probe_next[key] = next_at
            await clock.sleep(next_at - clock.monotonic())
            now = clock.monotonic()
            # Drift-free schedule; after a long stall, skip the missed slots rather than burst.
            next_at += probe.interval_s
            if next_at < now:
                next_at = now + probe.interval_s
            if unit.state not in (UnitState.RUNNING, UnitState.STARTING) or not unit.alive():
                continue
            t0 = clock.monotonic()
            try:
                obs = await probe.observe()
            except Exception as exc:  # a broken probe is journaled, and keeps trying
                log.exception("probe %s/%s failed", unit.name, probe.name)
                obs = Observation(unit.name, probe.name, False, clock.monotonic(), clock.wall(), {},
                                  f"probe error: {type(exc).__name__}: {exc}")
            if probe.timed:  # how long the probe took, whatever it found (a timeout too): a sample
                obs = replace(obs, values={**obs.values, "duration_s": clock.monotonic() - t0})
            self.queue.put_nowait(obs)

    # -- shutdown ----------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for task in list(self._remedy_tasks):
            task.cancel()
        await asyncio.gather(*self._remedy_tasks, return_exceptions=True)
        if not self._leave_running:
            self.record(RecordKind.SUPERVISOR, None, {"event": "stopping", "units": sorted(self.units)})

            async def stop_one(unit: UnitRuntime) -> None:
                try:
                    await unit.stop()
                except EnmeiError as exc:
                    self.record(RecordKind.ALERT, unit.name, {"severity": "critical",
                                                              "message": f"could not stop at shutdown: {exc}"})

            # In reverse order: a unit stops once every unit after it (or requiring it) has stopped.
            stopped = {name: asyncio.Event() for name in self.units}

            async def stop_in_order(unit: UnitRuntime) -> None:
                try:
                    for dependent in self.order.stop_after(unit.name):
                        if dependent in stopped:
                            await stopped[dependent].wait()
                    if unit.alive():
                        await stop_one(unit)
                finally:
                    stopped[unit.name].set()

            await asyncio.gather(*(stop_in_order(u) for u in list(self.units.values())))
            # Handle what the backends reported while stopping (STOPPED events) before the end record.
            while not self.queue.empty():
                item = self.queue.get_nowait()
                if isinstance(item, UnitEvent):
                    self.record(RecordKind.UNIT_EVENT, item.unit, {"event": str(item.kind), **item.detail})
        for probes in self.probes.values():
            for probe in probes:
                with contextlib.suppress(Exception):
                    await probe.aclose()
        for unit in self.units.values():
            with contextlib.suppress(Exception):
                unit.close_startup()
        await self.decider.aclose()
        with contextlib.suppress(Exception):
            self.alerts.flush(final=True)  # what was coalesced since the last window is counted too
        if isinstance(self.policy, ReloadablePolicy):
            with contextlib.suppress(Exception):
                self.policy.close()
        # After the policy: its sandbox process is in the process backend's helper cage, which the
        # backend removes when it closes (a cgroup still holding a process cannot be removed).
        for backend in self._backends.values():
            with contextlib.suppress(Exception):
                await backend.close()
        self.record(RecordKind.SUPERVISOR, None, {"event": "stopped", "left_running": (self._leave_running and [
            n for n, u in self.units.items() if u.alive()]) or []})
        await self.journal.aflush(timeout_s=10.0)


#: operator commands that cancel a running repair rather than wait for it
_OVERRIDES = frozenset({"stop", "start", "restart"})


def _by_operator(d: Decision) -> bool:
    return d.rule == "manual"


def _outcome_of(task: asyncio.Task[Any]) -> dict[str, Any]:
    if task.cancelled() or task.exception() is not None:
        return {"state": "cancelled", "detail": "the remedy did not finish"}
    out = task.result()
    return {"state": str(out.state), "detail": out.detail}


def _answer(cmd: Command, answer: Mapping[str, Any]) -> None:
    """Resolve an operator's reply future (if any, and not abandoned by its client)."""
    if cmd.reply is not None and not cmd.reply.done():
        cmd.reply.set_result({"unit": cmd.unit, "action": cmd.action, "by": cmd.by, "seq": None, "preempted": None,
                              "rejected": None, "suppressed": None, **answer})


def journal_for(loaded: LoadedConfig) -> JournalWriter:
    """The journal a config names, with its anchors and witnesses (the key is made for a new journal
    only: ``IntegrityError`` if the journal exists and the key does not), not yet opened. A
    ``postgresql://`` journal is this supervisor's (``[supervisor] host``) chain there, with its spool in
    the state dir and its anchors signed with the same key (no head file: the peers' cross-links and the
    database's own durability take its place)."""
    key = loaded.anchor_key_path
    if loaded.journal_dsn is not None:
        from enmei.box.pgstore import PgJournal

        pg_anchors = (Anchors.from_files(key, loaded.state_dir / "journal.pg.head") if key is not None
                      else None)
        return PgJournal(loaded.journal_dsn, supervisor=loaded.host_name, spool_path=loaded.journal_path,
                         samples_retention_s=loaded.config.supervisor.samples_retention_s, anchors=pg_anchors)
    witness = [loaded.witness_path] if loaded.witness_path is not None else []
    anchors = Anchors.for_journal(key, loaded.journal_path, witness) if key is not None else None
    return Journal(loaded.journal_path, samples_retention_s=loaded.config.supervisor.samples_retention_s,
                   anchors=anchors)


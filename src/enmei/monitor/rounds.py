"""The typing schedule as a unit's injector, run by the engine in rounds (``kind = "typing_schedule"``).

:class:`ScheduleInjection` is what ``[[units.NAME.injectors]] kind = "typing_schedule"`` builds. The
engine runs :meth:`ScheduleInjection.run` as monitor work beside the unit's probe loops (started and
cancelled with them: on unit stop, removal, reconfiguration, engine stop). It runs rounds of
:class:`enmei.monitor.schedule.TypingSchedule`; every observation goes to the engine's queue (the
``keylogger`` detector reads them), every slot and every round's start and end to ``record`` (the
engine journals them as ``injection`` records).

When a round runs:

* ``auto``: the first ``start_after_s`` after the unit first runs, then ``every_s`` after the last
  round ended; a policy's ``inject(unit, NAME)`` (:meth:`trigger`) starts one at once;
  ``inject(unit, NAME, pause_s = N)`` (:meth:`pause`) ends the running round and starts none for N s.
* Only while ``gate()`` says nothing against it: the engine's gate refuses while the unit is not
  running (starting, stopped, exited) or a remedy runs on it (a repair, an isolation). A round already
  running ends at the next observation once the gate refuses (its end record says why); the schedule
  itself types into no paused guest (such a burst is recorded as dropped).
* A round ends at the detector's verdict on it (:meth:`concluded`, called by the engine for the
  verdicts of ``keylogger`` detectors reading this injector), after ``round_slots`` slots, or
  ``round_s`` seconds: a round is bounded in slots and time.

``run`` never raises for what the unit does (a VM that cannot be observed gives observations with ``ok``
false, a backend without the verbs a refused round); it ends only when cancelled.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from enmei.clock import Clock
from enmei.config.model import TypingScheduleInjector
from enmei.model import Observation, Verdict
from enmei.monitor.base import Probe
from enmei.monitor.schedule import ScheduleSettings, TypingSchedule, TypingTarget
from enmei.visor.base import Backend

__all__ = ["ScheduleInjection", "note_verdict"]

Record = Callable[[str, Mapping[str, Any]], None]
Gate = Callable[[], str | None]


class ScheduleInjection(Probe):
    """The typing schedule of one unit, in rounds (see the module)."""

    def __init__(self, unit: str, cfg: TypingScheduleInjector, clock: Clock, backend: Backend) -> None:
        super().__init__(unit, cfg.name, 0.0, clock)
        self.cfg = cfg
        self.backend = backend
        self.rounds = 0
        self.running = False  # a round is under way
        self._triggered = False
        self._paused_until = 0.0
        self._stop_why: str | None = None

    # -- what a policy (and the engine) asks -----------------------------------------------------

    def trigger(self) -> str | None:
        """Start a round now (a policy's ``inject``); the reason it cannot, or None. A round under way
        goes on (one at a time)."""
        if self.running:
            return None
        self._triggered = True
        self._paused_until = 0.0
        return None

    def pause(self, seconds: float) -> None:
        """End the running round (at its next observation) and start none for ``seconds``."""
        self._paused_until = self.clock.monotonic() + seconds
        self._triggered = False
        if self.running:
            self._stop_why = f"paused by the policy for {seconds:g} s"

    def concluded(self, verdict: Verdict) -> None:
        """The detector reached ``verdict`` on the round under way: the round ends."""
        if self.running and self._stop_why is None:
            self._stop_why = f"verdict {verdict.kind}"

    async def observe(self) -> Observation:
        """Not a one-shot injector: what it would do (the engine runs :meth:`run` instead)."""
        return self._obs(True, {"rounds": float(self.rounds)})

    # -- the engine's loop -----------------------------------------------------------------------

    async def run(self, gate: Gate, put: Callable[[Observation], None], record: Record) -> None:
        """Rounds until cancelled (see the module). A backend that cannot type and observe is refused
        once (journaled) and then left alone."""
        if not _can_type(self.backend):
            record("refused", {"schedule": self.name,
                               "reason": f"the {self.backend.kind} backend cannot type into a unit or read its"
                                         " disk and network counters: no rounds"})
            return
        next_at: float | None = None  # armed when the unit first runs
        while True:
            now = self.clock.monotonic()
            closed = gate() is not None
            if next_at is None and not closed:
                next_at = now + self.cfg.start_after_s if self.cfg.auto else float("inf")
            due = self._triggered or (next_at is not None and now >= next_at)
            if not due or now < self._paused_until or closed:
                # polled on the engine's clock (a unit's state has no event of its own here): a trigger,
                # or the gate opening, is seen within half a second
                until = max(next_at if next_at is not None else now, self._paused_until)
                await self.clock.sleep(max(0.01, min(until - now, 0.5)))
                continue
            self._triggered = False
            await self._round(gate, put, record)
            next_at = self.clock.monotonic() + self.cfg.every_s if self.cfg.auto else float("inf")

    async def _round(self, gate: Gate, put: Callable[[Observation], None], record: Record) -> None:
        cfg = self.cfg
        self.rounds += 1
        seed = (cfg.seed + self.rounds - 1) if cfg.seed is not None else int.from_bytes(os.urandom(4), "little")
        console: Path | None = None
        log_path = getattr(self.backend, "log_path", None)
        if cfg.echo and callable(log_path):
            found = log_path(self.unit, "console")
            console = found if isinstance(found, Path) else None
        settings = ScheduleSettings(interval_s=cfg.interval_s, gap_s=cfg.gap_s, jitter_s=cfg.jitter_s,
                                    block_slots=cfg.block_slots, key_gap_s=cfg.key_gap_s, chars=cfg.burst_keys,
                                    echo_timeout_s=cfg.echo_timeout_s,
                                    max_slots=cfg.round_slots, max_s=cfg.round_s, fast_slots=cfg.fast_slots,
                                    fast_gap_s=cfg.fast_gap_s, fast_jitter_s=cfg.fast_jitter_s,
                                    fast_quiet_s=cfg.fast_quiet_s, min_quiet_s=cfg.min_quiet_s,
                                    end_at_echo=cfg.end_at_echo and console is not None)
        target: TypingTarget = self.backend  # type: ignore[assignment]  # checked by _can_type
        sched = TypingSchedule(target, self.unit, self.clock, seed=seed, name=self.name, settings=settings,
                               sink=Path(cfg.sink) if cfg.sink else None, console=console,
                               record=lambda kind, detail: record(kind, {**detail, "round": self.rounds}))
        self._stop_why = None
        self.running = True
        record("round_start", {"schedule": self.name, "round": self.rounds, "seed": seed, "bait": sched.bait,
                               "max_slots": cfg.round_slots, "max_s": cfg.round_s})

        def emit(obs: Observation) -> bool:
            put(obs)
            if self._stop_why is None:
                refused = gate()
                if refused is not None:
                    self._stop_why = refused
            return self._stop_why is not None

        summary: dict[str, Any] = {}
        why = "cancelled (the unit or the engine stopped)"
        try:
            summary = await sched.run(emit)
            why = self._stop_why or ("slots used up" if sched.slots >= cfg.round_slots else "round time up")
        finally:
            self.running = False
            record("round_end", {"schedule": self.name, "round": self.rounds, "seed": seed, "why": why,
                                 "slots": sched.slots, "bursts": sched.bursts, "dropped": sched.dropped,
                                 "bait_found": sched.bait_found, **{k: v for k, v in summary.items()
                                                                    if k in ("seconds",)}})


def _can_type(backend: Backend) -> bool:
    return all(callable(getattr(backend, verb, None))
               for verb in ("send_keys", "block_stats", "net_stats", "guest_running"))


def note_verdict(injectors: Mapping[str, Probe], verdict: Verdict) -> None:
    """Tell the schedule a ``keylogger`` detector reads (its source is ``keylogger:NAME``) that its round
    has its verdict."""
    source = verdict.detector
    if not source.startswith("keylogger:"):
        return
    inj = injectors.get(source.split(":", 1)[1])
    if isinstance(inj, ScheduleInjection):
        inj.concluded(verdict)

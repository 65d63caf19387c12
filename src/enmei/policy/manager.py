"""The policy the engine runs: a Starlark (or rules) policy in a sandbox, hot-reloaded, never fatal.

``PolicyManager`` implements ``Policy`` and ``ReloadablePolicy``. Its promises:

* ``decide(event, view)`` never raises for anything the policy does. When an evaluation fails (error,
  endless loop, deep recursion, huge allocation, malformed decision, unknown remedy or unit), the failure
  becomes a notice (``{"event": "error", ...}`` with kind, file:line:column, the handler and unit), and
  the event gets the fallback policy's decisions instead (the built-in policy: a crashed unit is still
  restarted), so supervision never stops. The same failure is noticed at most once per
  ``error_every_s`` of the view's clock, with a count of the repeats in between.
* The history the policy reads (``enmei.policy.history``) is updated from every event passed to
  ``decide`` and every decision returned, fallback ones included.
* ``check_reload()`` looks at the file (one ``stat``); when its content changed it builds the new
  version, loads it in a new sandbox and runs it once on canned events (each handler, ``smoke``); only
  if all of that passes does it replace the running version (notice ``reloaded``). Otherwise the running
  version stays and the notice is ``rejected`` with the error and its file:line:column. A rejected
  content is not tried again until the file changes once more. The history carries over a reload.
* ``revert(reason)`` (the engine calls it after a run of evaluations that missed its deadline) goes back
  to the version that ran before the current one, or, with none, suspends the policy: every event gets
  the fallback's decisions until the file changes. Either way the slow content is not loaded again
  until the file changes. ``offloop`` tells the engine to evaluate in a thread of its own (a sandbox
  process: waiting for it frees the interpreter); ``note()`` gives the history what was decided without it.
* ``drain_notices()`` returns (and forgets) the notices not yet taken: ``loaded`` at start, then errors.

Where it runs: the shipped default library in this process (``InProcessSandbox``: it is enmei's own code,
with bounded inputs; the step and time limits still apply), a policy file in a sandbox process of its own
(``WorkerSandbox``: memory capped too). ``sandbox=`` chooses otherwise.

Start-up is strict: a policy that does not load raises ``PolicyError`` from the constructor, so a
supervisor with a broken policy file refuses to start rather than running something else silently.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from enmei.errors import PolicyError
from enmei.model import (
    Decision,
    Event,
    Health,
    Outcome,
    RemedyState,
    Severity,
    Tick,
    UnitEvent,
    UnitEventKind,
    UnitState,
    Verdict,
    VerdictKind,
)
from enmei.policy.base import Policy, UnitView, View
from enmei.policy.builtin import BuiltinPolicy
from enmei.policy.core import EvalFailure, Limits
from enmei.policy.encode import decisions_from, handler_for, payload
from enmei.policy.failure import PolicyFailure
from enmei.policy.history import History
from enmei.policy.program import ProgramSpec, build
from enmei.policy.sandbox import InProcessSandbox, Sandbox, SandboxFactory, WorkerSandbox
from enmei.remedy import REMEDIES
from enmei.visor.registry import capabilities_of

__all__ = ["BUILTIN", "PolicyManager", "load_default", "open_policy", "smoke_events", "smoke_view"]

log = logging.getLogger(__name__)

_Stat = tuple[int, int, int] | None
NEED_HISTORY = "enmei-need-history:"
DEFAULT_HISTORY_S = 86_400.0
#: the fallback of last resort (the built-in policy holds no state, so one instance serves every manager)
BUILTIN = BuiltinPolicy()


def _stat(path: Path | None) -> _Stat:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def smoke_view() -> View:
    """A plausible one-unit view for trying a policy out before any real view exists."""
    unit = UnitView(name="smoke", backend="process", state=UnitState.RUNNING, health=Health.OK, alive=True,
                    uptime_s=120.0, remedy=None, restarts_in_window=1, budget=5, window_s=300.0, next_delay_s=0.5,
                    escalate_retry_s=60.0, rejuvenate_every_s=None, rejuvenate_window_s=60.0, stop_timeout_s=10.0,
                    capabilities=frozenset(str(c) for c in capabilities_of("process")))
    return View(1000.0, {"smoke": unit})


def smoke_events(unit: str, now: float) -> list[Event]:
    """Canned events, one or more per handler, that a policy must survive before it runs for real."""
    return [
        UnitEvent(unit, UnitEventKind.EXITED, now, {"code": 1, "signal": None, "uptime_s": 3.0}),
        UnitEvent(unit, UnitEventKind.STARTED, now, {"pid": 4242}),
        Verdict(unit, "probe-failures:http", VerdictKind.PROBE_FAILED, Severity.CRITICAL, now,
                "probe http failed 3 times in a row: refused", {"probe": "http", "streak": 3}),
        Verdict(unit, "charts:latency_s", VerdictKind.ANOMALY, Severity.WARNING, now, "latency_s out of control",
                {"probe": "http", "value": 0.5, "centre": 0.01, "rule": "ewma"}),
        Verdict(unit, "charts:latency_s", VerdictKind.ANOMALY, Severity.CRITICAL, now, "latency_s out of control",
                {"probe": "http", "value": 2.0, "centre": 0.01, "rule": "cusum"}),
        Verdict(unit, "aging:rss_bytes", VerdictKind.AGING, Severity.WARNING, now, "rss_bytes grows",
                {"metric": "rss_bytes", "exhaust_in_s": 3600.0, "limit": 5e8}),
        Verdict(unit, "logs", VerdictKind.LOG_ANOMALY, Severity.WARNING, now, "unusual log lines", {}),
        Verdict(unit, "signature:demo", VerdictKind.LOG_SIGNATURE, Severity.CRITICAL, now,
                "looks like known anomaly memory_leak of demo (p = 0.97)",
                {"class": "memory_leak", "remedy": "restart", "p": 0.97, "application": "demo"}),
        Verdict(unit, "qemu.pvpanic", VerdictKind.PANIC, Severity.CRITICAL, now, "guest panicked", {}),
        Outcome(f"{unit}-smoke", unit, "restart", RemedyState.FAILED, now - 5.0, now, "start failed: smoke", {}),
        Tick(now, 0.0),
    ]


class PolicyManager:
    """A policy file (or the shipped default) run safely; see the module docstring for the promises."""

    def __init__(self, path: Path | None = None, *, sandbox: SandboxFactory | None = None,
                 limits: Limits | None = None, fallback: Policy | None = BUILTIN, history: History | None = None,
                 smoke: bool = True, error_every_s: float = 60.0, trial_view: View | None = None) -> None:
        self.path = path
        self.limits = limits or Limits()
        self.fallback = fallback  # None: a failed evaluation decides nothing
        self.history = history or History()
        self.smoke = smoke
        self.error_every_s = error_every_s
        # The shipped library is enmei's own code, its inputs bounded: it runs in this process (step and
        # time limits still apply). A policy file is the operator's: it runs in a sandbox process, whose
        # memory is capped. A round trip to that process costs more than the evaluation itself (measured:
        # 0.1-0.15 ms when both cores are idle, because each side is woken on the other core).
        self._factory: SandboxFactory = sandbox or (InProcessSandbox if path is None else WorkerSandbox)
        self._remedy_names = tuple(REMEDIES)
        # ``trial_view`` (e.g. a config's units, ``enmei.policy.trial``): the first load tries every unit of it.
        self._last_view: View | None = trial_view
        self._trial_all = trial_view is not None
        self._errors: dict[tuple[Any, ...], list[float]] = {}  # key -> [last noticed at, repeats since]
        self._notices: list[dict[str, Any]] = []
        self._rejected: str | None = None
        self._stat = _stat(path)
        self._previous: ProgramSpec | None = None  # the version before the running one, for ``revert``
        self.suspended = False  # reverted with no previous version: the fallback decides
        self.spec: ProgramSpec = build(path)
        self.version = self.spec.version  # the running version's (a content hash), in every decision
        self._box: Sandbox = self._load(self.spec)
        self._horizon()
        self._notices.append({"event": "loaded", "policy": self.version, "file": self._file(),
                              "handlers": list(self._box.handlers), "sandbox": self._box.kind})

    # -- the Policy protocol -----------------------------------------------------------------------

    @property
    def handlers(self) -> list[str]:
        return list(self._box.handlers)

    @property
    def offloop(self) -> bool:
        """Whether the engine should evaluate off its loop: true when the policy runs in a sandbox process
        (waiting for it releases the interpreter; an evaluation in this process would not)."""
        return self._box.kind == "process"

    def decide(self, event: Event, view: View) -> list[Decision]:
        """The running policy's decisions for ``event`` (the fallback's if it fails); never raises."""
        if tuple(REMEDIES) != self._remedy_names:
            self._reload_same()
        self._last_view = view
        if self.suspended:
            fallback = self.fallback.decide(event, view) if self.fallback is not None else []
            self.note(event, fallback, view.now)
            return fallback
        self.history.observe(event)
        handler = handler_for(event)
        if handler not in self._box.handlers:
            return []
        try:
            decisions = self._evaluate(self._box, handler, event, view, self.version)
        except PolicyFailure as failure:
            decisions = self._failed(failure, handler, event, view)
        self.history.decided(decisions, view.now)
        return decisions

    def _evaluate(self, box: Sandbox, handler: str, event: Event, view: View, version: str, *,
                  check_units: bool = True) -> list[Decision]:
        unit = getattr(event, "unit", None)
        # The event's unit's history travels with the evaluation; a policy that asks for another unit's
        # fails with NEED_HISTORY and runs again with all of them (policies are pure: the second run
        # answers as the first would have). Which histories go first changes the cost, never the answer.
        hist = self.history
        # A tick's first guess: the units not running (a tick handler looks at the ones in trouble).
        first = ([n for n, u in view.units.items() if u.state is not UnitState.RUNNING] if unit is None
                 else [unit] if unit in view.units else [])
        try:
            result = box.call(payload(handler, event, view, hist.payload(first, view.now)))
        except PolicyFailure as failure:
            if NEED_HISTORY not in failure.message:
                raise
            result = box.call(payload(handler, event, view, hist.payload(view.units, view.now)))
        try:
            return decisions_from(result, view, policy=version, handler=handler, check_units=check_units)
        except EvalFailure as failure:
            # What the handler returned is checked outside the interpreter: the refusal points at the
            # handler's definition in the operator's file.
            if version != self.spec.version:  # a candidate being tried: ``_load`` locates it
                raise PolicyFailure(failure.kind, failure.message) from None
            line, column = _def_line(self.spec.text or self.spec.sources.get("policy", ""), handler)
            raise PolicyFailure(failure.kind, failure.message, file=self._file(), line=line,
                                column=column) from None

    def _failed(self, failure: PolicyFailure, handler: str, event: Event, view: View) -> list[Decision]:
        unit = getattr(event, "unit", None)
        fallback: list[Decision] = []
        if self.fallback is not None:
            try:
                fallback = self.fallback.decide(event, view)
            except Exception:  # the fallback of last resort must not take decide() down either
                log.exception("fallback policy %s failed", self.fallback.version)
        key = (handler, failure.kind, failure.file, failure.line, failure.message[:200])
        seen = self._errors.get(key)
        if seen is not None and view.now - seen[0] < self.error_every_s:
            seen[1] += 1
            return fallback
        notice: dict[str, Any] = {"event": "error", "policy": self.version, "handler": handler, "unit": unit,
                                  **failure.as_notice(), "cause": type(event).__name__,
                                  "fallback": self.fallback.version if self.fallback is not None else None,
                                  "fallback_decisions": [d.action for d in fallback]}
        if seen is not None and seen[1]:
            notice["repeated"] = int(seen[1])
        self._errors[key] = [view.now, 0]
        if len(self._errors) > 256:
            self._errors.pop(next(iter(self._errors)))
        self._notices.append(notice)
        log.warning("policy %s failed in %s: %s", self.version, handler, failure)
        return fallback

    # -- loading and reloading ---------------------------------------------------------------------

    def _file(self) -> str:
        return str(self.path) if self.path is not None else "<shipped default library>"

    def _load(self, spec: ProgramSpec) -> Sandbox:
        box = self._factory(spec, self.limits)
        if not self.smoke:
            return box
        view = self._last_view if self._last_view is not None and self._last_view.units else smoke_view()
        trial_units = list(view.units) if self._trial_all else [next(iter(view.units))]
        self._trial_all = False
        try:
            for event in (e for unit in trial_units for e in smoke_events(unit, view.now)):
                handler = handler_for(event)
                if handler in box.handlers:
                    self._evaluate(box, handler, event, view, spec.version, check_units=False)
        except PolicyFailure as failure:
            box.close()
            file, line, column = failure.file, failure.line, failure.column
            message = failure.message
            if file is None or file.startswith("<"):
                # Not located inside the policy (the driver calling the handler, or the check of what it
                # returned): point at the handler's definition in the operator's file instead.
                file = self._file()
                line, column = _def_line(spec.text or spec.sources.get("policy", ""), handler)
                if "extra positional argument" in message or "Missing parameter" in message:
                    message = f"{handler} must take two parameters, (event, ctx): {message}"
            raise PolicyFailure(failure.kind, f"fails on a trial {handler} event: {message}",
                                file=file, line=line, column=column) from None
        return box

    def _horizon(self) -> None:
        """How far back the history goes: the policy's ``HISTORY_S``, else a day."""
        self.history.horizon_s = self._box.history_s or DEFAULT_HISTORY_S

    def _reload_same(self) -> None:
        """Remedies were registered since the sandbox loaded (``ctx.remedies`` is baked in): load again."""
        self._remedy_names = tuple(REMEDIES)
        try:
            box = self._factory(self.spec, self.limits)
        except PolicyError as err:
            log.warning("could not reload %s with the new remedies: %s", self.version, err)
            return
        old, self._box = self._box, box
        old.close()

    def check_reload(self) -> list[dict[str, Any]]:
        """Reload the policy file if its content changed; the notices to journal (usually none)."""
        if self.path is None:
            return []
        st = _stat(self.path)
        if st == self._stat:
            return []
        self._stat = st
        base = {"policy": self.version, "file": self._file()}
        if st is None:
            return [{"event": "rejected", **base, "kind": "load", "error": f"{self._file()}: the file is gone; "
                     f"{self.version} keeps running"}]
        try:
            spec = build(self.path)
        except PolicyError as err:
            return [self._rejection(base, err, None)]
        if spec.sha256 in (self.spec.sha256, self._rejected):
            return []
        try:
            box = self._load(spec)
        except PolicyError as err:
            self._rejected = spec.sha256
            return [self._rejection(base, err, spec.version)]
        old, previous = self._box, self.version
        if not self.suspended:
            self._previous = self.spec
        self._box, self.spec, self.version, self._rejected = box, spec, spec.version, None
        self.suspended = False
        old.close()
        self._horizon()
        return [{"event": "reloaded", **base, "policy": self.version, "previous": previous,
                 "handlers": list(box.handlers), "sandbox": box.kind}]

    def note(self, event: Event, decisions: list[Decision], now: float) -> None:
        """Tell the history of an event someone else decided (the engine's fallback, while this policy
        was late), and of what was decided, so that the policy's next evaluations count them."""
        self.history.observe(event)
        self.history.decided(decisions, now)

    def revert(self, reason: str) -> list[dict[str, Any]]:
        """Stop running the current version (it is too slow, says ``reason``): go back to the version that
        ran before it, or, without one, suspend (the fallback decides every event) until the file changes.
        The current content is not loaded again until the file changes. Returns the notice to journal."""
        bad = self.version
        self._rejected = self.spec.sha256
        base = {"file": self._file(), "from": bad, "reason": reason}
        previous = self._previous
        if previous is not None:
            try:
                box = self._load(previous)
            except PolicyError as err:
                log.warning("cannot go back to %s: %s", previous.version, err)
            else:
                old = self._box
                self._box, self.spec, self.version, self._previous = box, previous, previous.version, None
                old.close()
                self._horizon()
                log.warning("policy %s reverted to %s: %s", bad, self.version, reason)
                return [{"event": "reverted", "policy": self.version, **base}]
        self.suspended = True
        log.warning("policy %s suspended (%s): %s decides until the file changes", bad, reason,
                    self.fallback.version if self.fallback is not None else "nothing")
        return [{"event": "suspended", "policy": bad, **base,
                 "fallback": self.fallback.version if self.fallback is not None else None}]

    def _rejection(self, base: Mapping[str, Any], err: PolicyError, candidate: str | None) -> dict[str, Any]:
        log.warning("policy %s rejected: %s", self._file(), err)
        return {"event": "rejected", **base, "candidate": candidate, "kind": getattr(err, "kind", "syntax"),
                "error": f"{err}; {self.version} keeps running", "line": err.line, "column": err.column}

    def drain_notices(self) -> list[dict[str, Any]]:
        """The notices not yet taken (loaded, errors), oldest first; each is journaled once."""
        out, self._notices = self._notices, []
        return out

    def close(self) -> None:
        """End the sandbox process. ``decide`` after this starts a new one."""
        self._box.close()


def open_policy(path: str | Path | None = None, **kwargs: Any) -> PolicyManager:
    """A manager for a policy file (``.star`` or ``.toml`` rules); ``None``: the shipped default library.

    Raises ``PolicyError`` (file:line:column) if the policy does not load.
    """
    return PolicyManager(Path(path) if path is not None else None, **kwargs)


def load_default(**kwargs: Any) -> PolicyManager:
    """A manager running the shipped default library (``enmei/policy/library/default.star``)."""
    return PolicyManager(None, **kwargs)


def _def_line(source: str, handler: str) -> tuple[int | None, int | None]:
    """(line, column) of ``def handler(`` in ``source``, if it is there."""
    for number, text in enumerate(source.splitlines(), start=1):
        stripped = text.lstrip()
        if stripped.startswith(f"def {handler}(") or stripped.startswith(f"def {handler} ("):
            return number, len(text) - len(stripped) + 1
    return None, None

"""The vocabulary of enmei: states, observations, verdicts, decisions and outcomes.

Data flows one way through these types::

    Observation --detect--> Verdict --policy--> Decision --remedy--> Outcome
    UnitEvent (a backend's fact: started, exited, ...) goes to the policy like a Verdict.

Every type here is a frozen dataclass holding plain values, so that a journal record made from it holds
the evidence itself and never a reference to a live object (``as_dict`` gives the JSON-ready form).

This module is a leaf: it imports nothing from enmei.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "Decision",
    "Event",
    "Health",
    "Observation",
    "Outcome",
    "RecordKind",
    "RemedyState",
    "Severity",
    "Tick",
    "UnitEvent",
    "UnitEventKind",
    "UnitState",
    "Verdict",
    "VerdictKind",
    "as_dict",
    "describe_exit",
]


class UnitState(StrEnum):
    """Where a unit is in its lifecycle (see ``enmei.engine.unit`` for the arcs)."""

    PENDING = "pending"  # declared, never started by this supervisor
    STARTING = "starting"  # started, still inside its start grace period
    RUNNING = "running"  # alive past its start grace period
    STOPPING = "stopping"  # asked to stop (graceful, then forced)
    STOPPED = "stopped"  # stopped on purpose; nothing will start it but a decision
    EXITED = "exited"  # ended on its own: crash, kill, exit
    BACKOFF = "backoff"  # waiting out a restart delay
    ESCALATED = "escalated"  # restart budget spent: slow retries, an alert raised each time


class Health(StrEnum):
    """What the probes last said of a unit."""

    UNKNOWN = "unknown"
    OK = "ok"
    DEGRADED = "degraded"
    FAILING = "failing"


class RemedyState(StrEnum):
    """Lifecycle of one remedy run: PENDING -> RUNNING -> SUCCEEDED | FAILED | TIMED_OUT | CANCELLED."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self not in (RemedyState.PENDING, RemedyState.RUNNING)


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class VerdictKind(StrEnum):
    """What a detector concluded."""

    PROBE_FAILED = "probe_failed"  # an active probe failed N times in a row
    PROBE_RECOVERED = "probe_recovered"  # a failing probe passes again
    ANOMALY = "anomaly"  # a metric left its expected behaviour (control chart, NAB detector)
    AGING = "aging"  # a resource trends towards exhaustion (predicted time in evidence)
    LOG_ANOMALY = "log_anomaly"  # log lines or templates out of the ordinary
    LOG_SIGNATURE = "log_signature"  # a unit's log mix looks like a known anomaly of a signature (class in evidence)
    PANIC = "panic"  # a guest kernel reported a panic
    KEYLOGGER_SUSPECTED = "keylogger_suspected"  # the guest's I/O follows injected keys (or leaked the bait)
    BOT_SUSPECTED = "bot_suspected"  # outbound traffic that no request or input explains
    HIDDEN_PROCESS = "hidden_process"  # a process the guest's memory holds but its own view does not show
    HIDDEN_MODULE = "hidden_module"  # a kernel module the guest's memory holds but its own view does not show
    HIDDEN_FILE = "hidden_file"  # a file the guest's disk holds but its own ls does not show
    CLEAN = "clean"  # an active test found nothing (its evidence says which test, how many samples)
    INCONCLUSIVE = "inconclusive"  # an active test could not decide (the reason is in the evidence)


class UnitEventKind(StrEnum):
    """Facts reported by a backend about a unit."""

    STARTED = "started"
    ADOPTED = "adopted"
    EXITED = "exited"
    STOPPED = "stopped"
    START_FAILED = "start_failed"
    LOG_FLOOD = "log_flood"  # a captured stream passed its rate: {"stream", "phase": "begin" | "end", ...}
    HANDOVER = "handover"  # a step of a socket handover: {"step": "new_started" | "new_ready" | ..., ...}


class RecordKind(StrEnum):
    """Kinds of journal records."""

    SUPERVISOR = "supervisor"  # supervisor started / stopping / stopped, config loaded
    UNIT_STATE = "unit.state"  # a unit changed lifecycle state
    UNIT_EVENT = "unit.event"  # a backend fact: exited with code, adopted, ...
    HEALTH = "unit.health"  # a unit's health changed
    VERDICT = "verdict"
    DECISION = "decision"
    REMEDY_START = "remedy.start"
    REMEDY_OUTCOME = "remedy.outcome"
    REMEDY_STEP = "remedy.step"  # one step of a running remedy, as it ended (a shadow update's clone, swap...)
    ALERT = "alert"
    SAMPLES = "samples"  # a summary of observations over a period
    POLICY = "policy"  # policy loaded, reloaded, rejected
    RELOAD = "reload"  # a config reload: its diff, its refusal (file:line:key), its end
    RESET = "unit.reset"  # an operator reset a unit's budget, backoff and breakers (enmei ctl reset)
    ANCHOR = "anchor"  # an HMAC anchor over the chain so far
    UPGRADE = "upgrade"  # enmei ctl upgrade: requested, successor started, self-check, handed over / fell back
    INJECTION = "injection"  # an injector acted on a unit: a typing schedule's round start/end, each slot
    FLEET = "fleet"  # this host in its fleet: leader elected / stepped down, the fleet database lost / back


@dataclass(frozen=True, slots=True)
class Observation:
    """One probe result: ``ok``, named numeric values (e.g. ``latency_s``, ``rss_bytes``) and text.

    ``lines`` is the text channel: lines a probe read (a unit's log, a VM's serial console), oldest
    first, without their line ends; empty for probes that observe numbers only.
    """

    unit: str
    probe: str
    ok: bool
    mono: float
    wall: float
    values: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None
    lines: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Verdict:
    """A detector's judgement with its evidence (value, centre line, limits, rule, window...)."""

    unit: str
    detector: str
    kind: VerdictKind
    severity: Severity
    mono: float
    summary: str
    evidence: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UnitEvent:
    """A fact about a unit from its backend (``detail`` holds exit code, signal, stderr tail...)."""

    unit: str
    kind: UnitEventKind
    mono: float
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Tick:
    """A timer event for policies (periodic evaluation)."""

    mono: float
    wall: float


@dataclass(frozen=True, slots=True)
class Decision:
    """What a policy asks for: run remedy ``action`` on ``unit``, not before ``not_before`` (monotonic)."""

    action: str
    unit: str
    reason: str
    args: Mapping[str, Any] = field(default_factory=dict)
    not_before: float | None = None
    policy: str = "builtin"
    rule: str = ""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one remedy run ended."""

    remedy_id: str
    unit: str
    action: str
    state: RemedyState
    started_mono: float
    ended_mono: float
    detail: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return self.ended_mono - self.started_mono


Event = UnitEvent | Verdict | Outcome | Tick


def describe_exit(detail: Mapping[str, Any]) -> str:
    """How a unit ended, for a person: "killed by SIGKILL", "exited with code 3", or the backend's reason.

    >>> describe_exit({"signal": "SIGSEGV", "code": None}), describe_exit({"code": 3})
    ('killed by SIGSEGV', 'exited with code 3')
    """
    if detail.get("signal"):
        return f"killed by {detail['signal']}"
    if detail.get("code") is not None:
        return f"exited with code {detail['code']}"
    return str(detail.get("reason") or "exited")


def as_dict(obj: Any) -> dict[str, Any]:
    """The JSON-ready form of one of the dataclasses above (enums become their string values)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        out[f.name] = _plain(getattr(obj, f.name))
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, StrEnum):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return as_dict(value)
    return value

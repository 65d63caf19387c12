"""``enmei bench policy``: evaluations per second of the shipped default library, as the engine runs it.

The policy runs as in the supervisor: a ``PolicyManager`` over the shipped library in its sandbox process,
each evaluation a full ``decide(event, view)`` (payload, round trip, result checks, history). The stream
is a busy supervisor's: four units (three processes, one VM), a tick per simulated second and, between
ticks, exits, verdicts of every kind and remedy outcomes, at a seeded random mix; the units' views move
with it (states, restarts in the window, running remedies), and the history the policy reads fills up
as it would. The first ``warmup`` evaluations are not timed.

Result: ``evaluations_per_s`` (sequential, one at a time as the engine calls them), ``p50_ms``, ``p99_ms``
and ``max_ms`` of single evaluations, and what was measured (sandbox, evaluations, decisions made).
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import Any

from enmei.model import (
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
from enmei.policy.base import UnitView, View
from enmei.policy.manager import load_default
from enmei.policy.sandbox import InProcessSandbox, SandboxFactory, WorkerSandbox

__all__ = ["GOAL_PER_S", "run", "stream"]

GOAL_PER_S = 10_000


def _units() -> dict[str, UnitView]:
    base = UnitView(name="api", backend="process", state=UnitState.RUNNING, health=Health.OK, alive=True,
                    uptime_s=600.0, remedy=None, restarts_in_window=0, budget=5, window_s=300.0, next_delay_s=0.0,
                    escalate_retry_s=60.0, rejuvenate_every_s=None, rejuvenate_window_s=60.0, stop_timeout_s=10.0,
                    capabilities=frozenset({"stats", "logs", "signals"}))
    return {
        "api": base,
        "db": dataclasses.replace(base, name="db", budget=3, rejuvenate_every_s=86_400.0),
        "worker": dataclasses.replace(base, name="worker", window_s=600.0),
        "vm": dataclasses.replace(base, name="vm", backend="qemu", stop_timeout_s=30.0,
                                  capabilities=frozenset({"stats", "snapshot", "keys", "panic"})),
    }


def _verdict(rng: random.Random, unit: str, now: float) -> Verdict:
    kind = rng.choice([VerdictKind.ANOMALY, VerdictKind.ANOMALY, VerdictKind.AGING, VerdictKind.PROBE_FAILED,
                       VerdictKind.LOG_ANOMALY])
    if kind is VerdictKind.ANOMALY:
        sev = Severity.CRITICAL if rng.random() < 0.3 else Severity.WARNING
        value = rng.uniform(0.05, 2.0)
        return Verdict(unit, "charts:latency_s", kind, sev, now, f"latency_s of http out of control: {value:.3f}s",
                       {"metric": "latency_s", "component": "http", "probe": "http", "value": value,
                        "centre": 0.01, "lower": 0.004, "upper": 0.03, "rule": "ewma", "z": rng.uniform(4, 20),
                        "ranking": [{"component": "http", "score": 9.5, "onset": now - 3.0}]})
    if kind is VerdictKind.AGING:
        return Verdict(unit, "aging:rss_bytes", kind, Severity.WARNING, now, "rss_bytes grows 1 MiB/s",
                       {"metric": "rss_bytes", "value": 3e8, "level": 2.9e8, "limit": 5e8, "slope_per_s": 1.0e6,
                        "exhaust_in_s": rng.uniform(60.0, 7200.0), "mk_z": 6.2, "mk_p": 1e-9, "window_s": 1200.0})
    if kind is VerdictKind.PROBE_FAILED:
        return Verdict(unit, "probe-failures:http", kind, Severity.CRITICAL, now,
                       "probe http failed 3 times in a row: connection refused",
                       {"probe": "http", "streak": 3, "rule": "3 consecutive failures", "last_error": "refused",
                        "first_failure_mono": now - 3.0, "failing_for_s": 3.0})
    return Verdict(unit, "logs:templates", kind, Severity.WARNING, now, "3 unusual log templates in 60s",
                   {"templates": ["E <*> timeout", "W retry <*>"], "score": 4.2})


def stream(n: int, seed: int = 0, *, gap_s: float = 30.0, tick_share: float = 0.25) -> list[tuple[Event, View]]:
    """``n`` (event, view) pairs of a troubled supervisor (see the module docstring).

    Between evaluations the clock moves on by ``gap_s`` on average (exponentially distributed), so each of
    the four units has an incident every couple of minutes and the histories fill as they would; a
    share ``tick_share`` of the evaluations are ticks, the rest exits, verdicts and outcomes.
    """
    rng = random.Random(seed)
    units = _units()
    names = list(units)
    now, wall = 10_000.0, 1_700_000_000.0
    out: list[tuple[Event, View]] = []
    for i in range(n):
        now += rng.expovariate(1.0 / gap_s)
        name = rng.choice(names)
        u = units[name]
        roll = rng.random()
        if roll < tick_share:
            event: Event = Tick(now, wall + now)
        elif roll < tick_share + (1 - tick_share) * 0.4:
            event = _verdict(rng, name, now)
        elif roll < tick_share + (1 - tick_share) * 0.7:
            u = dataclasses.replace(u, state=UnitState.EXITED, alive=False, uptime_s=None, remedy=None)
            event = UnitEvent(name, UnitEventKind.EXITED, now,
                              {"code": rng.choice([1, 2, None]), "signal": rng.choice([None, "SIGKILL"]),
                               "uptime_s": round(rng.uniform(0.5, 900.0), 3), "stderr_tail": ["panic: boom"]})
        else:
            action = rng.choice(["restart", "restart", "rejuvenate", "escalate", "degrade", "start"])
            state = rng.choice([RemedyState.SUCCEEDED, RemedyState.SUCCEEDED, RemedyState.FAILED,
                                RemedyState.TIMED_OUT])
            alive = state is RemedyState.SUCCEEDED
            u = dataclasses.replace(u, state=UnitState.RUNNING if alive else UnitState.EXITED, alive=alive,
                                    uptime_s=1.0 if alive else None, remedy=None)
            event = Outcome(f"{name}-{i}", name, action, state, now - 2.0, now,
                            "running" if alive else "died during start (exit code 1)", {"delay_s": 0.5})
        restarts = min(u.budget + 1, max(0, u.restarts_in_window + rng.choice([-1, 0, 0, 1])))
        up = None if not u.alive else (u.uptime_s or 0.0) + gap_s
        u = dataclasses.replace(u, restarts_in_window=restarts, next_delay_s=0.5 * 2 ** max(0, restarts - 1),
                                uptime_s=up, remedy=rng.choice([None, None, None, None, "restart"]))
        units[name] = u
        out.append((event, View(now, dict(units))))
    return out


def _measure(sandbox: SandboxFactory, events: list[tuple[Event, View]], warmup: int) -> dict[str, Any]:
    manager = load_default(sandbox=sandbox)
    try:
        decide = manager.decide
        for event, view in events[:warmup]:
            decide(event, view)
        timed = events[warmup:]
        lat: list[float] = []
        decisions = 0
        clock = time.perf_counter
        start = clock()
        for event, view in timed:
            t0 = clock()
            decisions += len(decide(event, view))
            lat.append(clock() - t0)
        elapsed = clock() - start
        errors = [n for n in manager.drain_notices() if n.get("event") == "error"]
    finally:
        manager.close()
    lat.sort()
    n = len(lat)
    return {
        "evaluations_per_s": round(n / elapsed, 1), "p50_ms": round(lat[n // 2] * 1e3, 4),
        "p99_ms": round(lat[min(n - 1, int(n * 0.99))] * 1e3, 4), "max_ms": round(lat[-1] * 1e3, 4),
        "evaluations": n, "decisions": decisions, "policy": manager.version, "policy_errors": len(errors),
    }


def run(evaluations: int = 20_000, *, warmup: int = 2_000, seed: int = 0, in_process: bool = False) -> dict[str, Any]:
    """Measure (see the module docstring). ``in_process`` measures the in-process sandbox instead."""
    events = stream(evaluations + warmup, seed)
    sandbox: SandboxFactory = InProcessSandbox if in_process else WorkerSandbox
    result = _measure(sandbox, events, warmup)
    return {**result, "sandbox": "in-process" if in_process else "process", "units": len(_units()),
            "goal_per_s": GOAL_PER_S, "meets_goal": result["evaluations_per_s"] >= GOAL_PER_S}

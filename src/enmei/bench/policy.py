"""``enmei bench policy``: evaluations per second of the shipped default library, as the engine runs it.

Each evaluation is a full ``PolicyManager.decide(event, view)``: payload, evaluation under the limits,
result checks, history. The engine runs the shipped library in its own process (``sandbox: in-process``);
a policy *file* runs in a sandbox process, and ``sandboxed`` measures the same library that way.

Two seeded streams of events and views for four units (three processes, one VM) whose views move with the
events (states, restarts in the window, running remedies) and whose histories fill as they would:

* ``troubled`` (the headline): a tick each second, and each unit in trouble about once a minute (a latency
  anomaly, an aging or probe verdict, a crash, a remedy's outcome): a bad hour for a supervisor;
* ``incidents``: three evaluations in four are incidents, 30 s apart on average (the handlers that do
  the work, back to back; histories as full as they get).

Figures: ``evaluations_per_s`` (one at a time, as the engine calls them), ``p50_ms``, ``p99_ms``, ``max_ms``,
per handler too. The first ``warmup`` evaluations of each run are not timed.
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
from enmei.policy.encode import handler_for
from enmei.policy.manager import load_default
from enmei.policy.sandbox import InProcessSandbox, SandboxFactory, WorkerSandbox
from enmei.visor.registry import capabilities_of

__all__ = ["GOAL_PER_S", "main", "run", "stream"]

GOAL_PER_S = 10_000


def _caps(kind: str) -> frozenset[str]:
    """What a unit of backend ``kind`` shows the policy (as declared in the backend registry)."""
    return frozenset(str(c) for c in capabilities_of(kind))


def _units() -> dict[str, UnitView]:
    base = UnitView(name="api", backend="process", state=UnitState.RUNNING, health=Health.OK, alive=True,
                    uptime_s=600.0, remedy=None, restarts_in_window=0, budget=5, window_s=300.0, next_delay_s=0.0,
                    escalate_retry_s=60.0, rejuvenate_every_s=None, rejuvenate_window_s=60.0, stop_timeout_s=10.0,
                    capabilities=_caps("process"))
    return {
        "api": base,
        "db": dataclasses.replace(base, name="db", budget=3, rejuvenate_every_s=86_400.0),
        "worker": dataclasses.replace(base, name="worker", window_s=600.0),
        "vm": dataclasses.replace(base, name="vm", backend="qemu", stop_timeout_s=30.0,
                                  capabilities=_caps("qemu")),
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


def _incident(rng: random.Random, units: dict[str, UnitView], i: int, now: float) -> tuple[Event, str]:
    name = rng.choice(list(units))
    u = units[name]
    roll = rng.random()
    if roll < 0.4:
        event: Event = _verdict(rng, name, now)
    elif roll < 0.7:
        u = dataclasses.replace(u, state=UnitState.EXITED, alive=False, uptime_s=None, remedy=None)
        event = UnitEvent(name, UnitEventKind.EXITED, now,
                          {"code": rng.choice([1, 2, None]), "signal": rng.choice([None, "SIGKILL"]),
                           "uptime_s": round(rng.uniform(0.5, 900.0), 3), "stderr_tail": ["panic: boom"]})
    else:
        action = rng.choice(["restart", "restart", "rejuvenate", "escalate", "degrade", "start"])
        state = rng.choice([RemedyState.SUCCEEDED, RemedyState.SUCCEEDED, RemedyState.FAILED, RemedyState.TIMED_OUT])
        alive = state is RemedyState.SUCCEEDED
        u = dataclasses.replace(u, state=UnitState.RUNNING if alive else UnitState.EXITED, alive=alive,
                                uptime_s=1.0 if alive else None, remedy=None)
        event = Outcome(f"{name}-{i}", name, action, state, now - 2.0, now,
                        "running" if alive else "died during start (exit code 1)", {"delay_s": 0.5})
    restarts = min(u.budget + 1, max(0, u.restarts_in_window + rng.choice([-1, 0, 0, 1])))
    units[name] = dataclasses.replace(u, restarts_in_window=restarts, next_delay_s=0.5 * 2 ** max(0, restarts - 1),
                                      remedy=rng.choice([None, None, None, None, "restart"]))
    return event, name


def _age(units: dict[str, UnitView], dt: float) -> None:
    for name, u in units.items():
        if u.alive and u.uptime_s is not None:
            units[name] = dataclasses.replace(u, uptime_s=u.uptime_s + dt)
        elif not u.alive and u.remedy is None and u.state is UnitState.EXITED:
            # A restart brings it back a little later.
            units[name] = dataclasses.replace(u, state=UnitState.RUNNING, alive=True, uptime_s=0.0)


def stream(n: int, seed: int = 0, *, kind: str = "troubled") -> list[tuple[Event, View]]:
    """``n`` (event, view) pairs of the ``troubled`` or the ``incidents`` stream (see the module docstring)."""
    rng = random.Random(seed)
    units = _units()
    now, wall = 10_000.0, 1_700_000_000.0
    out: list[tuple[Event, View]] = []
    i = 0
    while len(out) < n:
        i += 1
        if kind == "troubled":
            now += 1.0
            _age(units, 1.0)
            out.append((Tick(now, wall + now), View(now, dict(units))))
            for _ in range(len(units)):
                if rng.random() < 1 / 60 and len(out) < n:
                    event, _name = _incident(rng, units, i, now)
                    out.append((event, View(now, dict(units))))
        else:
            dt = rng.expovariate(1 / 30.0)
            now += dt
            _age(units, dt)
            if rng.random() < 0.25:
                out.append((Tick(now, wall + now), View(now, dict(units))))
            else:
                event, _name = _incident(rng, units, i, now)
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
        by: dict[str, list[float]] = {}
        decisions = 0
        clock = time.perf_counter
        start = clock()
        for event, view in timed:
            t0 = clock()
            decisions += len(decide(event, view))
            dt = clock() - t0
            lat.append(dt)
            by.setdefault(handler_for(event), []).append(dt)
        elapsed = clock() - start
        errors = [n for n in manager.drain_notices() if n.get("event") == "error"]
    finally:
        manager.close()
    return {**_figures(lat, elapsed), "evaluations": len(lat), "decisions": decisions, "policy": manager.version,
            "policy_errors": len(errors),
            "by_handler": {h: {**_figures(v, sum(v)), "evaluations": len(v)} for h, v in sorted(by.items())}}


def _figures(lat: list[float], elapsed: float) -> dict[str, float]:
    lat = sorted(lat)
    n = len(lat)
    return {"evaluations_per_s": round(n / elapsed, 1), "p50_ms": round(lat[n // 2] * 1e3, 4),
            "p99_ms": round(lat[min(n - 1, int(n * 0.99))] * 1e3, 4), "max_ms": round(lat[-1] * 1e3, 4)}


def run(evaluations: int = 20_000, *, warmup: int = 2_000, seed: int = 0) -> dict[str, Any]:
    """Measure (see the module docstring): the headline stream as the engine runs the library, then the
    incident stream, then the headline stream in a sandbox process."""
    troubled = stream(evaluations + warmup, seed, kind="troubled")
    head = _measure(InProcessSandbox, troubled, warmup)
    incidents = _measure(InProcessSandbox, stream(evaluations + warmup, seed, kind="incidents"), warmup)
    sandboxed = _measure(WorkerSandbox, troubled, warmup)
    keep = ("evaluations_per_s", "p50_ms", "p99_ms", "max_ms", "evaluations", "by_handler")
    return {**head, "sandbox": "in-process", "stream": "troubled", "units": len(_units()),
            "goal_per_s": GOAL_PER_S, "meets_goal": head["evaluations_per_s"] >= GOAL_PER_S,
            "incidents": {k: incidents[k] for k in keep},
            "sandboxed": {k: sandboxed[k] for k in keep}}


def main() -> None:
    """``python -m enmei.bench.policy``: run and print one JSON object (``enmei bench policy --json``)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description="policy evaluations per second (shipped default library)")
    parser.add_argument("--evaluations", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(run(args.evaluations, seed=args.seed)))


if __name__ == "__main__":
    main()

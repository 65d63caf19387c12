"""The counters behind ``/metrics``: kept live from what the engine writes, seeded at start from the journal.

A :class:`Tally` is an engine subscriber (every journal record, O(1) each) and observer (every probe
observation). At start, :func:`seed_tally` reads the counts of everything the journal holds up to the
tally's ``after_seq`` (records) and ``after_wall`` (probe samples) — one bounded ``GROUP BY`` query per
counter family through ``enmei.box.Reader`` — and :meth:`Tally.merge` adds them. So a counter continues
across enmei restarts: after a restart it starts from the value it had, and ``rate()`` sees a reset only
where the history really is gone:

* counters of **records** (verdicts, decisions, remedies, remedy durations, exits, restarts, alerts,
  floods) count the whole journal; records are never pruned, so these never go back;
* the **probe-duration histogram** is seeded from the journal's probe samples, which are pruned after
  ``samples_retention_s`` (and dropped while the disk is away): after a prune, the next enmei start
  shows a lower count — one reset that Prometheus's ``rate()`` handles as such.

Label values are bounded by fixed sets: exit reasons (:data:`EXIT_REASONS`), restart reasons
(:data:`RESTART_REASONS`), alert severities (``enmei.model.Severity``, anything else is ``other``),
decision actions (the action vocabulary, anything else is ``unknown``), verdict kinds.
"""

from __future__ import annotations

import bisect
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enmei.box.readers import open_reader
from enmei.model import Observation, Severity
from enmei.policy.actions import actions, restart_actions

__all__ = ["BUCKETS", "EXIT_REASONS", "PROBE_BUCKETS", "RESTART_REASONS", "STATS", "Tally", "exit_reason",
           "seed_tally"]

#: Remedy duration histogram buckets (seconds): restarts take about a second, rejuvenations up to minutes.
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: Probe duration histogram buckets (seconds): a loopback probe answers in a millisecond or two; a probe
#: timeout is a few seconds (the default ``timeout_s`` is 2 s, exec probes may run up to 10 s and more).
PROBE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: How a unit ended: killed by a signal, exited 0, exited with another code, a backend's reason (a VM's
#: panic, QEMU gone without a SHUTDOWN event), or its start failed.
EXIT_REASONS = ("clean", "error", "signal", "other", "start_failed")
#: What caused a restart: a unit's exit, a verdict (failed probe, anomaly, aging, panic), a remedy that
#: ended (a failed restart retried, an escalation's retry), an operator's command, or something else (a
#: schedule, the policy's own choice on a tick).
RESTART_REASONS = ("exit", "verdict", "retry", "operator", "other")
#: Process-stat values exported as per-unit series (the newest observation of the unit's process probe).
STATS = ("rss_bytes", "cpu_seconds", "num_fds", "num_threads")

_CAUSE_REASONS = {"unit.event": "exit", "verdict": "verdict", "remedy.outcome": "retry"}  # cause kind -> reason
_CAUSES_KEPT = 4096  # recent seqs of records that can cause a decision (their kind names the reason)


def exit_reason(kind: str, body: Mapping[str, Any]) -> str | None:
    """The exit reason a record counts for, or None if it is not an end of a unit (see ``EXIT_REASONS``;
    the same rule as ``Reader.exit_counts``)."""
    if kind == "unit.event" and body.get("event") == "exited":
        sig, code = body.get("signal"), body.get("code")
        if isinstance(sig, str) and sig:
            return "signal"
        if isinstance(code, int) and not isinstance(code, bool):
            return "clean" if code == 0 else "error"
        return "other"
    if kind == "unit.state" and body.get("to") == "exited" and str(body.get("reason", "")).startswith("start failed"):
        return "start_failed"
    return None


def _action(value: object) -> str:
    # A policy may name an action that does not exist (the engine refuses it, on the record): such
    # names are counted as "unknown", so that a hostile policy cannot grow the label set without bound.
    return str(value) if isinstance(value, str) and value in actions() else "unknown"


def _severity(value: object) -> str:
    return str(value) if value in {str(s) for s in Severity} else "other"


def _histogram_add(counts: dict[Any, list[int]], sums: dict[Any, float], key: Any, bounds: Sequence[float],
                   value: float) -> None:
    c = counts.setdefault(key, [0] * (len(bounds) + 1))
    c[bisect.bisect_left(bounds, value)] += 1
    sums[key] = sums.get(key, 0.0) + value


def _restart_actions() -> frozenset[str]:
    return frozenset(restart_actions())


@dataclass
class Tally:
    """Counters kept from the journal records the engine writes and the observations its probes make."""

    verdicts: Counter[tuple[str, str]] = field(default_factory=Counter)
    decisions: Counter[tuple[str, str]] = field(default_factory=Counter)
    remedies: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    alerts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (unit, severity)
    durations: dict[str, list[int]] = field(default_factory=dict)  # action -> counts per bucket (+Inf last)
    duration_sum: dict[str, float] = field(default_factory=dict)
    floods: Counter[tuple[str, str]] = field(default_factory=Counter)  # (unit, stream) -> episodes begun
    flood_dropped: Counter[tuple[str, str]] = field(default_factory=Counter)  # bytes, episodes ended
    flooding: dict[tuple[str, str], bool] = field(default_factory=dict)
    exits: Counter[tuple[str, str]] = field(default_factory=Counter)  # (unit, reason)
    restarts: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (unit, action, reason)
    probe_counts: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (unit, probe) -> buckets
    probe_sum: dict[tuple[str, str], float] = field(default_factory=dict)
    stats: dict[str, dict[str, float]] = field(default_factory=dict)  # unit -> newest process stats
    restart_actions: frozenset[str] = field(default_factory=_restart_actions)
    after_seq: int = 0  # live records at or below this seq are counted by ``seed_tally`` instead
    after_wall: float = 0.0  # live observations at or before this wall time likewise
    causes: OrderedDict[int, str] = field(default_factory=OrderedDict)  # seq -> kind, the recent ones

    def __call__(self, seq: int, kind: str, unit: str, body: Mapping[str, Any]) -> None:
        if seq <= self.after_seq:
            return
        if kind in _CAUSE_REASONS:
            self.causes[seq] = kind
            if len(self.causes) > _CAUSES_KEPT:
                self.causes.popitem(last=False)
        self.add(kind, unit, body)

    def add(self, kind: str, unit: str, body: Mapping[str, Any]) -> None:
        """Count one record (without the ``after_seq`` check)."""
        if kind == "verdict":
            self.verdicts[(unit, str(body.get("kind", "?")))] += 1
        elif kind == "decision":
            self.decisions[(unit, _action(body.get("action")))] += 1
            self._restart(unit, body)
        elif kind == "remedy.outcome":
            action = str(body.get("action", "?"))
            self.remedies[(unit, action, str(body.get("state", "?")))] += 1
            d = body.get("duration_s")
            if isinstance(d, (int, float)) and not isinstance(d, bool) and d >= 0:
                _histogram_add(self.durations, self.duration_sum, action, BUCKETS, float(d))
        elif kind == "alert":
            self.alerts[(unit, _severity(body.get("severity")))] += 1
        elif kind == "unit.event" and body.get("event") == "log_flood":
            key = (unit, str(body.get("stream", "?")))
            if body.get("phase") == "begin":
                self.floods[key] += 1
                self.flooding[key] = True
            elif body.get("phase") == "end":
                self.flooding[key] = False
                d = body.get("dropped_bytes")
                if isinstance(d, int) and not isinstance(d, bool) and d >= 0:
                    self.flood_dropped[key] += d
        reason = exit_reason(kind, body)
        if reason is not None:
            self.exits[(unit, reason)] += 1
        if kind == "unit.event" and body.get("event") in ("exited", "stopped"):
            self.stats.pop(unit, None)  # the instance is gone: its resource use with it

    def _restart(self, unit: str, body: Mapping[str, Any]) -> None:
        # The same rule as ``Reader.restart_counts``.
        if "rejected" in body or "suppressed" in body:
            return
        action = str(body.get("action", "?"))
        if action not in self.restart_actions and body.get("counted_as_restart") is not True:
            return
        if body.get("rule") == "manual":
            reason = "operator"
        else:
            cause = body.get("cause_seq")
            kind = self.causes.get(cause) if isinstance(cause, int) and not isinstance(cause, bool) else None
            reason = _CAUSE_REASONS.get(kind or "", "other")
        self.restarts[(unit, action, reason)] += 1

    def observe(self, obs: Observation) -> None:
        """Count one probe observation: its ``duration_s`` in the probe histogram, process stats kept."""
        if obs.wall <= self.after_wall:
            return
        d = obs.values.get("duration_s")
        if isinstance(d, (int, float)) and d >= 0:
            _histogram_add(self.probe_counts, self.probe_sum, (obs.unit, obs.probe), PROBE_BUCKETS, float(d))
        if obs.ok and "rss_bytes" in obs.values:
            self.stats[obs.unit] = {k: float(obs.values[k]) for k in STATS if k in obs.values}

    def merge(self, other: Tally) -> None:
        """Add ``other``'s counts (a seed) to these; ``other``'s flood states are older than these."""
        counters: list[tuple[Counter[Any], Counter[Any]]] = [
            (self.verdicts, other.verdicts), (self.decisions, other.decisions), (self.remedies, other.remedies),
            (self.alerts, other.alerts), (self.floods, other.floods), (self.flood_dropped, other.flood_dropped),
            (self.exits, other.exits), (self.restarts, other.restarts)]
        for mine, theirs in counters:
            mine.update(theirs)
        for key, on in other.flooding.items():
            self.flooding.setdefault(key, on)
        _merge_histogram(self.durations, self.duration_sum, other.durations, other.duration_sum)
        _merge_histogram(self.probe_counts, self.probe_sum, other.probe_counts, other.probe_sum)

    def copy(self) -> Tally:
        return Tally(Counter(self.verdicts), Counter(self.decisions), Counter(self.remedies), Counter(self.alerts),
                     {k: list(v) for k, v in self.durations.items()}, dict(self.duration_sum), Counter(self.floods),
                     Counter(self.flood_dropped), dict(self.flooding), Counter(self.exits), Counter(self.restarts),
                     {k: list(v) for k, v in self.probe_counts.items()}, dict(self.probe_sum),
                     {k: dict(v) for k, v in self.stats.items()}, self.restart_actions, self.after_seq,
                     self.after_wall)


def _merge_histogram(counts: dict[Any, list[int]], sums: dict[Any, float], more: Mapping[Any, list[int]],
                     more_sums: Mapping[Any, float]) -> None:
    for key, theirs in more.items():
        mine = counts.get(key)
        counts[key] = list(theirs) if mine is None else [a + b for a, b in zip(mine, theirs, strict=True)]
    for key, total in more_sums.items():
        sums[key] = sums.get(key, 0.0) + total


def seed_tally(journal: Path | Any, up_to_seq: int, up_to_wall: float = 0.0) -> Tally:
    """The counts of the journal's records with ``seq <= up_to_seq`` and probe samples with ``wall <=
    up_to_wall`` (blocking: call it in a thread). Flood states (``flooding``) are those of this supervisor's
    run only (since its last ``supervisor started`` record): an episode an earlier run left open is over.

    Raises ``BoxError`` when the journal cannot be read.
    """
    t = Tally(after_seq=up_to_seq, after_wall=up_to_wall)
    with open_reader(journal) as r:
        for unit, vkind, n in r.count_by("verdict", ["kind"], up_to_seq):
            t.verdicts[(str(unit), str(vkind if vkind is not None else "?"))] += int(n)
        for unit, action, n in r.count_by("decision", ["action"], up_to_seq):
            t.decisions[(str(unit), _action(action))] += int(n)
        for unit, action, state, n in r.count_by("remedy.outcome", ["action", "state"], up_to_seq):
            t.remedies[(str(unit), _str(action), _str(state))] += int(n)
        for unit, severity, n in r.count_by("alert", ["severity"], up_to_seq):
            t.alerts[(str(unit), _severity(severity))] += int(n)
        for action, bucket, n, total in r.value_buckets("remedy.outcome", "duration_s", "action", BUCKETS, up_to_seq):
            t.durations.setdefault(action, [0] * (len(BUCKETS) + 1))[bucket] += n
            t.duration_sum[action] = t.duration_sum.get(action, 0.0) + total
        for unit, reason, n in r.exit_counts(up_to_seq):
            t.exits[(unit, reason)] += n
        for unit, action, reason, n in r.restart_counts(up_to_seq, sorted(t.restart_actions)):
            t.restarts[(unit, action, reason)] += n
        for unit, metric, bucket, n, total in r.sample_histogram(".duration_s", PROBE_BUCKETS, up_to_wall):
            key = (unit, metric.removesuffix(".duration_s"))
            t.probe_counts.setdefault(key, [0] * (len(PROBE_BUCKETS) + 1))[bucket] += n
            t.probe_sum[key] = t.probe_sum.get(key, 0.0) + total
        for unit, stream, begun, dropped in r.flood_counts(up_to_seq):
            if begun:
                t.floods[(unit, stream)] += begun
            if dropped:
                t.flood_dropped[(unit, stream)] += dropped
        first = r.last_start_seq(up_to_seq) or 1
        for unit, stream, phase in r.flood_phases(first, up_to_seq):
            t.flooding[(unit, stream)] = phase == "begin"
    return t


def _str(v: object) -> str:
    return "?" if v is None else str(v)

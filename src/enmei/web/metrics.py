"""``/metrics``: the supervisor in Prometheus exposition format, read at scrape time.

A scrape takes a :class:`Snapshot` of the engine on the event loop (microseconds: the unit views,
journal counters and the :class:`Tally`), then renders it in a worker thread through a fresh
``CollectorRegistry`` holding one custom collector — nothing is registered in prometheus_client's
global registry, so embedding enmei never pollutes a host program's metrics.

Series (every name starts with ``enmei_``):

* ``enmei_info{version,policy}`` 1; ``enmei_unit_state{unit,state}`` and ``enmei_unit_health{unit,health}``
  1 for the current value and 0 for the others; ``enmei_unit_up{unit}``, ``enmei_unit_uptime_seconds``,
  ``enmei_unit_restarts_in_window``, ``enmei_unit_restart_budget``, ``enmei_unit_remedy_running``;
* ``enmei_probe_latency_seconds{unit,probe}`` and ``enmei_probe_ok{unit,probe}``: the newest sample;
* ``enmei_verdicts_total{unit,kind}``, ``enmei_decisions_total{unit,action}``,
  ``enmei_remedies_total{unit,action,state}`` (by outcome), ``enmei_alerts_total{severity}``, and the
  histogram ``enmei_remedy_duration_seconds{action}`` — counted over this supervisor's run (since its
  last ``supervisor started`` record, read back from the journal when the web server starts);
* ``enmei_log_floods_total{unit,stream}`` (flood episodes of a captured output stream begun),
  ``enmei_log_dropped_bytes_total{unit,stream}`` (dropped in episodes that ended) and
  ``enmei_log_flooding{unit,stream}`` (1 while an episode lasts), from the ``log_flood`` unit events;
* ``enmei_journal_records``, ``enmei_journal_durable_records``, ``enmei_journal_pending_records``,
  ``enmei_journal_size_bytes`` (file and WAL), ``enmei_journal_writable`` (0 while degraded),
  ``enmei_journal_dropped_samples``, ``enmei_journal_verify_ok`` and
  ``enmei_journal_verify_timestamp_seconds`` (the newest verification; absent before the first);
* ``enmei_web_refused_total{reason}``: requests refused and connections closed by the web server's
  limits (``enmei.web.limits``).
"""

from __future__ import annotations

import bisect
import contextlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from enmei.box import Reader
from enmei.errors import BoxError
from enmei.model import Health, UnitState
from enmei.policy.base import UnitView

__all__ = ["BUCKETS", "Snapshot", "Tally", "journal_size", "render", "seed_tally"]

#: Remedy duration histogram buckets (seconds): restarts take about a second, rejuvenations up to minutes.
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass
class Tally:
    """Counters kept from the journal records the engine writes (an engine subscriber; O(1) per record)."""

    verdicts: Counter[tuple[str, str]] = field(default_factory=Counter)
    decisions: Counter[tuple[str, str]] = field(default_factory=Counter)
    remedies: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    alerts: Counter[str] = field(default_factory=Counter)
    durations: dict[str, list[int]] = field(default_factory=dict)  # action -> counts per bucket (+Inf last)
    duration_sum: dict[str, float] = field(default_factory=dict)
    floods: Counter[tuple[str, str]] = field(default_factory=Counter)  # (unit, stream) -> episodes begun
    flood_dropped: Counter[tuple[str, str]] = field(default_factory=Counter)  # bytes, episodes ended
    flooding: dict[tuple[str, str], bool] = field(default_factory=dict)
    after_seq: int = 0  # live records at or below this seq are counted by ``seed_tally`` instead

    def __call__(self, seq: int, kind: str, unit: str, body: Mapping[str, Any]) -> None:
        if seq <= self.after_seq:
            return
        self.add(kind, unit, body)

    def add(self, kind: str, unit: str, body: Mapping[str, Any]) -> None:
        if kind == "verdict":
            self.verdicts[(unit, str(body.get("kind", "?")))] += 1
        elif kind == "decision":
            self.decisions[(unit, str(body.get("action", "?")))] += 1
        elif kind == "remedy.outcome":
            action = str(body.get("action", "?"))
            self.remedies[(unit, action, str(body.get("state", "?")))] += 1
            d = body.get("duration_s")
            if isinstance(d, (int, float)) and not isinstance(d, bool) and d >= 0:
                counts = self.durations.setdefault(action, [0] * (len(BUCKETS) + 1))
                counts[bisect.bisect_left(BUCKETS, float(d))] += 1
                self.duration_sum[action] = self.duration_sum.get(action, 0.0) + float(d)
        elif kind == "alert":
            self.alerts[str(body.get("severity", "?"))] += 1
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

    def copy(self) -> Tally:
        return Tally(Counter(self.verdicts), Counter(self.decisions), Counter(self.remedies), Counter(self.alerts),
                     {k: list(v) for k, v in self.durations.items()}, dict(self.duration_sum), Counter(self.floods),
                     Counter(self.flood_dropped), dict(self.flooding), self.after_seq)


def seed_tally(journal: Path, up_to_seq: int) -> Tally:
    """A tally of the records from this supervisor's last start up to ``up_to_seq`` (reads the journal; a thread).

    Raises ``BoxError`` when the journal cannot be read.
    """
    import json

    t = Tally()
    with Reader(journal) as reader:
        first = reader.last_start_seq(up_to_seq) or 1
        for kind, unit, body in reader.counted_records(first, up_to_seq):
            try:
                data = json.loads(body)
            except ValueError:
                continue
            if isinstance(data, dict):
                t.add(kind, unit, data)
    t.after_seq = up_to_seq
    return t


@dataclass(frozen=True)
class Snapshot:
    """What one scrape shows, taken on the event loop."""

    version: str
    policy: str
    units: Mapping[str, UnitView]
    probes: Mapping[str, list[str]]  # unit -> probe names that report latency / ok
    tally: Tally
    journal_path: Path
    journal_last_seq: int
    journal_durable_seq: int
    journal_pending: int
    journal_ok: bool
    journal_dropped_samples: int
    verify_ok: bool | None
    verify_wall: float | None
    web_refused: Mapping[str, int] = field(default_factory=dict)  # reason -> requests/connections refused


class _Collector(Collector):
    def __init__(self, snap: Snapshot, latest: Mapping[tuple[str, str], float]) -> None:
        self.snap = snap
        self.latest = latest

    def collect(self) -> Iterator[Metric]:
        s = self.snap
        info = GaugeMetricFamily("enmei_info", "enmei's version and the policy in force", labels=["version", "policy"])
        info.add_metric([s.version, s.policy], 1)
        yield info
        state = GaugeMetricFamily("enmei_unit_state", "1 for the unit's lifecycle state, 0 for the others",
                                  labels=["unit", "state"])
        health = GaugeMetricFamily("enmei_unit_health", "1 for the unit's health, 0 for the others",
                                   labels=["unit", "health"])
        up = GaugeMetricFamily("enmei_unit_up", "1 while the unit's process or VM is alive", labels=["unit"])
        uptime = GaugeMetricFamily("enmei_unit_uptime_seconds", "Since the current instance started", labels=["unit"])
        restarts = GaugeMetricFamily("enmei_unit_restarts_in_window", "Restarts within the budget window",
                                     labels=["unit"])
        budget = GaugeMetricFamily("enmei_unit_restart_budget", "Restarts allowed per window", labels=["unit"])
        running = GaugeMetricFamily("enmei_unit_remedy_running", "1 while a remedy runs on the unit",
                                    labels=["unit", "action"])
        for name, v in sorted(s.units.items()):
            for st in UnitState:
                state.add_metric([name, str(st)], 1.0 if v.state is st else 0.0)
            for h in Health:
                health.add_metric([name, str(h)], 1.0 if v.health is h else 0.0)
            up.add_metric([name], 1.0 if v.alive else 0.0)
            if v.uptime_s is not None:
                uptime.add_metric([name], v.uptime_s)
            restarts.add_metric([name], v.restarts_in_window)
            budget.add_metric([name], v.budget)
            running.add_metric([name, v.remedy or ""], 1.0 if v.remedy else 0.0)
        yield from (state, health, up, uptime, restarts, budget, running)
        latency = GaugeMetricFamily("enmei_probe_latency_seconds", "Newest probe latency", labels=["unit", "probe"])
        ok = GaugeMetricFamily("enmei_probe_ok", "1 if the newest probe passed", labels=["unit", "probe"])
        for (unit, metric), value in sorted(self.latest.items()):
            probe, _, what = metric.rpartition(".")
            (latency if what == "latency_s" else ok).add_metric([unit, probe], value)
        yield from (latency, ok)
        yield from self._counters(s.tally)
        refused = CounterMetricFamily("enmei_web_refused", "Web requests refused and connections closed by the "
                                      "limits (no_token, body_too_large, header_timeout, idle_per_client...)",
                                      labels=["reason"])
        for reason, n in sorted(s.web_refused.items()):
            refused.add_metric([reason], n)
        yield refused
        yield from self._journal(s)

    @staticmethod
    def _counters(t: Tally) -> Iterator[Metric]:
        verdicts = CounterMetricFamily("enmei_verdicts", "Verdicts by kind", labels=["unit", "kind"])
        for (u, k), n in sorted(t.verdicts.items()):
            verdicts.add_metric([u, k], n)
        decisions = CounterMetricFamily("enmei_decisions", "Decisions by action", labels=["unit", "action"])
        for (u, a), n in sorted(t.decisions.items()):
            decisions.add_metric([u, a], n)
        remedies = CounterMetricFamily("enmei_remedies", "Remedies by how they ended",
                                       labels=["unit", "action", "state"])
        for (u, a, st), n in sorted(t.remedies.items()):
            remedies.add_metric([u, a, st], n)
        alerts = CounterMetricFamily("enmei_alerts", "Alerts by severity", labels=["severity"])
        for sev, n in sorted(t.alerts.items()):
            alerts.add_metric([sev], n)
        hist = HistogramMetricFamily("enmei_remedy_duration_seconds", "How long remedies took", labels=["action"])
        for action, counts in sorted(t.durations.items()):
            cum, buckets = 0, []
            for bound, n in zip((*map(str, BUCKETS), "+Inf"), counts, strict=True):
                cum += n
                buckets.append((bound, float(cum)))
            hist.add_metric([action], buckets, t.duration_sum[action])
        yield from (verdicts, decisions, remedies, alerts, hist)
        floods = CounterMetricFamily("enmei_log_floods", "Flood episodes of a captured output stream",
                                     labels=["unit", "stream"])
        for (u, st), n in sorted(t.floods.items()):
            floods.add_metric([u, st], n)
        dropped = CounterMetricFamily("enmei_log_dropped_bytes", "Output bytes dropped in ended flood episodes",
                                      labels=["unit", "stream"])
        for (u, st), n in sorted(t.flood_dropped.items()):
            dropped.add_metric([u, st], n)
        flooding = GaugeMetricFamily("enmei_log_flooding", "1 while a flood episode lasts", labels=["unit", "stream"])
        for (u, st), on in sorted(t.flooding.items()):
            flooding.add_metric([u, st], 1.0 if on else 0.0)
        yield from (floods, dropped, flooding)

    @staticmethod
    def _journal(s: Snapshot) -> Iterator[Metric]:
        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield gauge("enmei_journal_records", "Records appended (the last seq)", s.journal_last_seq)
        yield gauge("enmei_journal_durable_records", "Records committed and fsynced", s.journal_durable_seq)
        yield gauge("enmei_journal_pending_records", "Records waiting to be written", s.journal_pending)
        yield gauge("enmei_journal_writable", "1 while the journal is written, 0 while degraded",
                    1.0 if s.journal_ok else 0.0)
        yield gauge("enmei_journal_dropped_samples", "Chart samples dropped while the disk was away",
                    s.journal_dropped_samples)
        yield gauge("enmei_journal_size_bytes", "Journal file and WAL size", journal_size(s.journal_path))
        if s.verify_ok is not None and s.verify_wall is not None:
            yield gauge("enmei_journal_verify_ok", "1 if the newest verification found the chain intact",
                        1.0 if s.verify_ok else 0.0)
            yield gauge("enmei_journal_verify_timestamp_seconds", "When the newest verification ended",
                        s.verify_wall)


def journal_size(path: Path) -> int:
    """Bytes of the journal file and its WAL (0 for what does not exist)."""
    size = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            size += Path(str(path) + suffix).stat().st_size
    return size


def latest_samples(journal: Path, probes: Mapping[str, list[str]]) -> dict[tuple[str, str], float]:
    """The newest ``<probe>.latency_s`` and ``<probe>.ok`` sample of each unit's probes (index seeks).

    No journal yet, or one that cannot be read: what was read so far (a scrape never fails on it).
    """
    out: dict[tuple[str, str], float] = {}
    try:
        reader = Reader(journal)
    except Exception:  # no journal file yet: no samples
        return out
    try:
        for unit, names in probes.items():
            for probe in names:
                for metric in (f"{probe}.latency_s", f"{probe}.ok"):
                    value = reader.latest_sample(unit, metric)
                    if value is not None:
                        out[(unit, metric)] = value
    except BoxError:
        pass
    finally:
        reader.close()
    return out


def render(snap: Snapshot) -> bytes:
    """The exposition text of ``snap`` (blocking: reads the newest samples; call it in a thread)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(snap, latest_samples(snap.journal_path, snap.probes)))
    return generate_latest(registry)

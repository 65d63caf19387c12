"""``/metrics``: the supervisor in Prometheus exposition format, read at scrape time.

A scrape takes a :class:`Snapshot` of the engine on the event loop (microseconds: the unit views, journal
counters and the :class:`~enmei.web.counters.Tally`), then renders it in a worker thread through a fresh
``CollectorRegistry`` holding one custom collector — nothing is registered in prometheus_client's global
registry, so embedding enmei never pollutes a host program's metrics.

Every series of a configured unit is there from the first scrape (zeros until something is counted) and
keeps its label set across scrapes: labels take values from fixed sets (``enmei.web.counters``). The
counters continue across enmei restarts (seeded from the journal, ``enmei.web.counters``). The names,
labels and meanings are listed in the README ("Metrics reference") and below.

Units (``unit`` label; ``@host`` for decisions and remedies on the host):

* ``enmei_info{version,policy}`` 1; ``enmei_unit_state{unit,state}`` and ``enmei_unit_health{unit,health}``
  1 for the current value and 0 for the others; ``enmei_unit_up{unit}``, ``enmei_unit_uptime_seconds``,
  ``enmei_unit_restarts_in_window``, ``enmei_unit_restart_budget``;
* ``enmei_unit_remedy_running{unit}`` 1 while a remedy runs, and ``enmei_unit_remedy_action{unit,action}``
  1 for the running remedy's action and 0 for the other remedies;
* ``enmei_unit_exits_total{unit,reason}`` (``clean``, ``error``, ``signal``, ``other``, ``start_failed``),
  ``enmei_unit_restarts_total{unit,action,reason}`` (``restart``, ``escalate``, ``start`` after an exit;
  caused by an ``exit``, a ``verdict``, a ``retry`` after a remedy ended, an ``operator``, ``other``);
* for units with a ``process`` probe, the main process's newest stats (0 while the unit has no process):
  ``enmei_unit_resident_memory_bytes``, ``enmei_unit_open_fds``, ``enmei_unit_threads`` (gauges) and
  ``enmei_unit_cpu_seconds_total`` (a counter of the current process: it restarts with the unit);
* ``enmei_probe_duration_seconds{unit,probe}``: histogram of how long each http, tcp and exec probe took,
  failures and timeouts included (buckets ``PROBE_BUCKETS``, 1 ms to 10 s);
  ``enmei_probe_latency_seconds{unit,probe}`` and ``enmei_probe_ok{unit,probe}``: the newest sample;
* ``enmei_verdicts_total{unit,kind}`` (every kind from the first scrape), ``enmei_decisions_total{unit,action}``
  (an action name outside the vocabulary is ``unknown``),
  ``enmei_remedies_total{unit,action,state}`` (by outcome), ``enmei_alerts_total{unit,severity}`` (``unit``
  empty for the supervisor's own alerts) and the histogram ``enmei_remedy_duration_seconds{action}``;
* ``enmei_log_floods_total{unit,stream}`` (flood episodes of a captured output stream begun),
  ``enmei_log_dropped_bytes_total{unit,stream}`` (dropped in episodes that ended) and
  ``enmei_log_flooding{unit,stream}`` (1 while an episode lasts), from the ``log_flood`` unit events;

The supervisor:

* ``enmei_journal_records``, ``enmei_journal_durable_records``, ``enmei_journal_pending_records``,
  ``enmei_journal_size_bytes`` (file and WAL), ``enmei_journal_writable`` (0 while degraded),
  ``enmei_journal_dropped_samples``, ``enmei_journal_verify_ok`` and
  ``enmei_journal_verify_timestamp_seconds`` (the newest verification; absent before the first);
* ``enmei_web_refused_total{reason}``: requests refused and connections closed by the web server's
  limits (``enmei.web.limits``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from enmei.box.readers import open_reader
from enmei.errors import BoxError
from enmei.model import Health, Severity, UnitState, VerdictKind
from enmei.policy.actions import actions
from enmei.policy.base import UnitView
from enmei.web.counters import (
    BUCKETS,
    EXIT_REASONS,
    PROBE_BUCKETS,
    RESTART_REASONS,
    Tally,
    seed_tally,
)

__all__ = ["BUCKETS", "PROBE_BUCKETS", "Snapshot", "Tally", "journal_size", "render", "seed_tally"]


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
    timed: Mapping[str, list[str]] = field(default_factory=dict)  # unit -> probes with a duration histogram
    stats_units: frozenset[str] = frozenset()  # units with a process probe
    journal_source: Any = None  # the writer, when the journal is not a file (read through open_reader)


K = TypeVar("K", bound=tuple[str, ...])


def _remedy_actions() -> list[str]:
    return sorted(n for n, a in actions().items() if not a.engine)


def _histogram(fam: HistogramMetricFamily, labels: list[str], bounds: Sequence[float], counts: Sequence[int],
               total: float) -> None:
    cum, buckets = 0, []
    for bound, n in zip((*map(str, bounds), "+Inf"), counts, strict=True):
        cum += n
        buckets.append((bound, float(cum)))
    fam.add_metric(labels, buckets, total)


def _counter(name: str, doc: str, labels: list[str], values: Mapping[K, int],
             zeros: Iterable[K] = ()) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=labels)
    for key in sorted({*values, *zeros}):
        fam.add_metric(list(key), float(values.get(key, 0)))
    return fam


class _Collector(Collector):
    def __init__(self, snap: Snapshot, latest: Mapping[tuple[str, str], float]) -> None:
        self.snap = snap
        self.latest = latest

    def collect(self) -> Iterator[Metric]:
        s = self.snap
        info = GaugeMetricFamily("enmei_info", "enmei's version and the policy in force", labels=["version", "policy"])
        info.add_metric([s.version, s.policy], 1)
        yield info
        yield from self._units(s)
        yield from self._stats(s)
        yield from self._probes(s)
        yield from self._counters(s.tally, sorted(s.units))
        refused = CounterMetricFamily("enmei_web_refused", "Web requests refused and connections closed by the "
                                      "limits (no_token, body_too_large, header_timeout, idle_per_client...)",
                                      labels=["reason"])
        for reason, n in sorted(s.web_refused.items()):
            refused.add_metric([reason], n)
        yield refused
        yield from self._journal(s)

    @staticmethod
    def _units(s: Snapshot) -> Iterator[Metric]:
        state = GaugeMetricFamily("enmei_unit_state", "1 for the unit's lifecycle state, 0 for the others",
                                  labels=["unit", "state"])
        health = GaugeMetricFamily("enmei_unit_health", "1 for the unit's health, 0 for the others",
                                   labels=["unit", "health"])
        up = GaugeMetricFamily("enmei_unit_up", "1 while the unit's process or VM is alive", labels=["unit"])
        uptime = GaugeMetricFamily("enmei_unit_uptime_seconds", "Since the current instance started (0 while "
                                   "it is not running)", labels=["unit"])
        restarts = GaugeMetricFamily("enmei_unit_restarts_in_window", "Restarts within the budget window",
                                     labels=["unit"])
        budget = GaugeMetricFamily("enmei_unit_restart_budget", "Restarts allowed per window", labels=["unit"])
        running = GaugeMetricFamily("enmei_unit_remedy_running", "1 while a remedy runs on the unit",
                                    labels=["unit"])
        action = GaugeMetricFamily("enmei_unit_remedy_action", "1 for the action of the remedy running on the "
                                   "unit, 0 for the other remedies", labels=["unit", "action"])
        remedies = _remedy_actions()
        for name, v in sorted(s.units.items()):
            for st in UnitState:
                state.add_metric([name, str(st)], 1.0 if v.state is st else 0.0)
            for h in Health:
                health.add_metric([name, str(h)], 1.0 if v.health is h else 0.0)
            up.add_metric([name], 1.0 if v.alive else 0.0)
            uptime.add_metric([name], v.uptime_s if v.uptime_s is not None else 0.0)
            restarts.add_metric([name], v.restarts_in_window)
            budget.add_metric([name], v.budget)
            running.add_metric([name], 1.0 if v.remedy else 0.0)
            for a in sorted({*remedies, *([v.remedy] if v.remedy else [])}):
                action.add_metric([name, a], 1.0 if v.remedy == a else 0.0)
        yield from (state, health, up, uptime, restarts, budget, running, action)

    @staticmethod
    def _stats(s: Snapshot) -> Iterator[Metric]:
        rss = GaugeMetricFamily("enmei_unit_resident_memory_bytes", "Resident memory of the unit's main process",
                                labels=["unit"])
        cpu = CounterMetricFamily("enmei_unit_cpu_seconds", "CPU time (user and system) of the unit's current "
                                  "main process", labels=["unit"])
        fds = GaugeMetricFamily("enmei_unit_open_fds", "Open file descriptors of the unit's main process",
                                labels=["unit"])
        threads = GaugeMetricFamily("enmei_unit_threads", "Threads of the unit's main process", labels=["unit"])
        for name in sorted(s.stats_units):
            v = s.units.get(name)
            stats = s.tally.stats.get(name, {}) if v is not None and v.alive else {}
            rss.add_metric([name], stats.get("rss_bytes", 0.0))
            cpu.add_metric([name], stats.get("cpu_seconds", 0.0))
            fds.add_metric([name], stats.get("num_fds", 0.0))
            threads.add_metric([name], stats.get("num_threads", 0.0))
        yield from (rss, cpu, fds, threads)

    def _probes(self, s: Snapshot) -> Iterator[Metric]:
        hist = HistogramMetricFamily("enmei_probe_duration_seconds", "How long each http, tcp and exec probe "
                                     "took, failures and timeouts included", labels=["unit", "probe"])
        t = s.tally
        keys = {(u, p) for u, ps in s.timed.items() for p in ps} | set(t.probe_counts)
        empty = [0] * (len(PROBE_BUCKETS) + 1)
        for unit, probe in sorted(keys):
            _histogram(hist, [unit, probe], PROBE_BUCKETS, t.probe_counts.get((unit, probe), empty),
                       t.probe_sum.get((unit, probe), 0.0))
        yield hist
        latency = GaugeMetricFamily("enmei_probe_latency_seconds", "Newest probe latency", labels=["unit", "probe"])
        ok = GaugeMetricFamily("enmei_probe_ok", "1 if the newest probe passed", labels=["unit", "probe"])
        for (unit, metric), value in sorted(self.latest.items()):
            probe, _, what = metric.rpartition(".")
            (latency if what == "latency_s" else ok).add_metric([unit, probe], value)
        yield from (latency, ok)

    @staticmethod
    def _counters(t: Tally, units: Sequence[str] = ()) -> Iterator[Metric]:
        restart_actions = sorted({*t.restart_actions, "start"})
        yield _counter("enmei_unit_exits", "Ends of a unit's instance not asked for by enmei, by reason (clean, "
                       "error, signal, other, start_failed)", ["unit", "reason"], t.exits,
                       [(u, r) for u in units for r in EXIT_REASONS])
        yield _counter("enmei_unit_restarts", "Restarts carried out, by action and cause (exit, verdict, "
                       "retry, operator, other)", ["unit", "action", "reason"], t.restarts,
                       [(u, a, r) for u in units for a in restart_actions for r in RESTART_REASONS])
        yield _counter("enmei_verdicts", "Verdicts by kind", ["unit", "kind"], t.verdicts,
                       [(u, str(k)) for u in units for k in VerdictKind])
        yield _counter("enmei_decisions", "Decisions by action", ["unit", "action"], t.decisions)
        yield _counter("enmei_remedies", "Remedies by how they ended", ["unit", "action", "state"], t.remedies)
        severities = (*map(str, Severity), "other")
        yield _counter("enmei_alerts", "Alerts journaled, by unit (empty: the supervisor's own) and severity",
                       ["unit", "severity"], t.alerts, [(u, sev) for u in ("", *units) for sev in severities])
        hist = HistogramMetricFamily("enmei_remedy_duration_seconds", "How long remedies took", labels=["action"])
        for action, counts in sorted(t.durations.items()):
            _histogram(hist, [action], BUCKETS, counts, t.duration_sum.get(action, 0.0))
        yield hist
        yield _counter("enmei_log_floods", "Flood episodes of a captured output stream", ["unit", "stream"], t.floods)
        yield _counter("enmei_log_dropped_bytes", "Output bytes dropped in ended flood episodes", ["unit", "stream"],
                       t.flood_dropped)
        flooding = GaugeMetricFamily("enmei_log_flooding", "1 while a flood episode lasts", labels=["unit", "stream"])
        for (u, st), on in sorted(t.flooding.items()):
            flooding.add_metric([u, st], 1.0 if on else 0.0)
        yield flooding

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


def latest_samples(journal: Path | Any, probes: Mapping[str, list[str]]) -> dict[tuple[str, str], float]:
    """The newest ``<probe>.latency_s`` and ``<probe>.ok`` sample of each unit's probes (index seeks).

    No journal yet, or one that cannot be read: what was read so far (a scrape never fails on it).
    """
    out: dict[tuple[str, str], float] = {}
    try:
        reader = open_reader(journal)
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
    registry.register(_Collector(snap, latest_samples(snap.journal_source or snap.journal_path, snap.probes)))
    return generate_latest(registry)

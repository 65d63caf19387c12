"""``metric``: enmei's NAB-benchmarked detector on any numeric value a unit's probes report.

This is the detector ``enmei bench nab`` and ``enmei bench detect`` score, on the same path:
:func:`scorer` builds the streaming detector — a rule-less
:class:`~enmei.detect.novelty.NoveltyDetector`, its evidence discounted by how often the stream has
given as much before (:class:`~enmei.detect.recurrence.RecurrenceDiscount`), inside the separate alarm
rule :class:`~enmei.detect.alarm.OneAlarmPerEpisode` — and both the benchmark (``bench.nab.make_detector``)
and this unit detector call it with the same arguments, feeding it one ``(value, time)`` at a time.

::

    [[units.web.detectors]]
    kind = "metric"
    metric = "latency_s"      # a key of the observations' values (latency_s, rss_bytes, error_rate...)
    probe = "http"            # only this probe's observations (default: every probe reporting it,
                              # each its own stream)
    learning = 750            # samples learned before scoring (the benchmark: NAB's probation)
    rest = 225                # the alarm rule: one alarm per episode of this many samples (0.3 × learning)
    alpha = 1e-4              # nominal false-alarm probability per sample that makes a verdict
    hold_off_s = 300          # then no verdict from that stream for this long (and until quiet 30 s)
    severity = "warning"

Verdicts are ANOMALY (what the shipped policy does with one: see the README), detector
``metric:NAME``, with evidence: metric, probe, value, score, alpha (the sample's nominal
false-alarm probability), level, rule (``novel_context`` or ``range_break``), novel (the families that saw a
new context), and ``suspect``: the probe whose stream alarmed. The verdict threshold is
``scorer.level_for(alpha)`` — the same meaning as a control chart's ``1 - alpha``.

Unlike the latency charts it is two-sided and learns contexts (seasonality by hour of day, sequences,
spread, trend), so it suits rates and levels more than a latency that can only get worse. ``reset()``
keeps what was learned (a restart does not change what normal is). Memory per stream: the detector's
(bounded: see :mod:`enmei.detect.novelty`); at most 16 streams (probes) per detector.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from enmei.detect.alarm import OneAlarmPerEpisode
from enmei.detect.base import Threshold
from enmei.detect.novelty import NoveltyDetector
from enmei.detect.protocol import NOTHING, DetectorContext, Judgement, Limit
from enmei.detect.recurrence import RecurrenceDiscount
from enmei.detect.registry import DetectorOptions, register
from enmei.model import Observation, Severity, Verdict, VerdictKind

__all__ = ["MetricDetector", "MetricOptions", "scorer"]

_MAX_STREAMS = 16


def scorer(learning: int = 750, rest: int | None = None) -> OneAlarmPerEpisode:
    """enmei's default streaming detector: a rule-less novelty detector learning ``learning`` samples,
    its alpha multiplied by (1 + earlier samples of the stream at least as surprising) (the recurrence
    discount, ``gamma`` 1), inside the one-alarm-per-episode rule with ``rest`` samples (default 0.3 ×
    ``learning``)."""
    learning = max(2, int(learning))
    rest = max(1, (3 * learning) // 10) if rest is None else int(rest)
    return OneAlarmPerEpisode(RecurrenceDiscount(NoveltyDetector(learning=learning, rest=1), gamma=1.0), rest=rest)


class MetricOptions(DetectorOptions):
    metric: str = Field(min_length=1)
    probe: str | None = None
    learning: int = Field(default=750, ge=10)
    rest: int | None = Field(default=None, ge=1)
    alpha: float = Field(default=1e-4, gt=0, lt=0.5)
    hold_off_s: float = Field(default=300.0, ge=0)
    severity: Literal["warning", "critical"] = "warning"


class MetricDetector:
    """ANOMALY verdicts from :func:`scorer` streams, one per probe reporting ``metric``."""

    def __init__(self, unit: str, opts: MetricOptions) -> None:
        self.kind = "metric"
        self.name = opts.detector_name
        self.unit = unit
        self.opts = opts
        self.streams: dict[str, OneAlarmPerEpisode] = {}
        self.gates: dict[str, Threshold] = {}
        self.level = scorer(opts.learning, opts.rest).level_for(opts.alpha)

    def feed(self, obs: Observation) -> Judgement:
        o = self.opts
        if (o.probe is not None and obs.probe != o.probe) or o.metric not in obs.values:
            return NOTHING
        try:
            value = float(obs.values[o.metric])
        except (TypeError, ValueError):
            return NOTHING
        det = self.streams.get(obs.probe)
        if det is None:
            if len(self.streams) >= _MAX_STREAMS:
                return NOTHING
            det = self.streams[obs.probe] = scorer(o.learning, o.rest)
            self.gates[obs.probe] = Threshold(self.level, hold_off_s=o.hold_off_s)
        score = det.update(value, obs.mono)
        ev = det.evidence()
        alarm = self.gates[obs.probe].judge(score, obs.mono, ev)
        if alarm is None:
            return NOTHING
        rule = str(ev.get("rule") or "novel_context")
        evidence = {"metric": o.metric, "probe": obs.probe, "component": obs.probe, "suspect": obs.probe,
                    "value": value, "score": score, "alpha": det.alpha_of(score), "level": self.level,
                    "alpha_level": o.alpha, "rule": rule,
                    "novel": [str(f) for f in ev.get("novel", [])] if isinstance(ev.get("novel"), list) else []}
        sev = Severity.CRITICAL if o.severity == "critical" else Severity.WARNING
        summary = (f"{o.metric} of {obs.probe} is unlike anything learned ({rule}): {value:.6g}, "
                   f"nominal p {evidence['alpha']:.2g} < {o.alpha:g}; suspect {obs.probe}")
        return Judgement((Verdict(self.unit, f"metric:{self.name}", VerdictKind.ANOMALY, sev, obs.mono, summary,
                                  evidence),))

    def reset(self) -> None:
        """Nothing to forget: what normal looks like outlives one instance of the service."""

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for probe, det in self.streams.items():
            ev = det.evidence()
            raw = ev.get("raw_score")
            out[probe] = {"rule": ev.get("rule"), "armed": self.gates[probe].armed,
                          "raw_score": raw if isinstance(raw, float) and math.isfinite(raw) else None}
        return {"metric": self.opts.metric, "level": self.level, "streams": out}

    def limits(self) -> dict[str, Limit]:
        return {}


def _metric(ctx: DetectorContext, opts: MetricOptions) -> MetricDetector:
    return MetricDetector(ctx.unit, opts)


register("metric", MetricOptions, _metric, example={"metric": "latency_s", "learning": 20})

"""A unit's log recognised as a known anomaly: kind ``log_signature``, a detector on the text channel.

The lines a ``log`` probe reads (a unit's stdout or stderr, a log file, a VM's console) are mined as
they come (:class:`enmei.logs.miner.TemplateMiner`, seeded with the signature's templates) and cut into
windows of the signature's ``window`` lines; each window's template-frequency ratios go through the
signature's network (:class:`enmei.logs.signatures.Signature`)::

    [[units.web.detectors]]
    kind = "log_signature"
    signature = "/etc/enmei/signatures/web.json"   # a file of `enmei signatures export`; "@enmei/demo": the
                                                   # one shipped for the demo service
    probe = "log"        # only this probe's lines (default: any observation that carries lines)
    confirm = 2          # windows in a row naming the same anomaly before a verdict
    min_p = 0.9          # default: the signature's own
    hold_off_s = 300     # then no verdict for this long
    severity = "critical"
    max_lines = 2000     # lines mined per observation at most; the others are dropped and counted

**Verdicts.** ``confirm`` windows in a row whose class is the same anomaly (any class but ``normal``)
at ``p >= min_p``: a LOG_SIGNATURE verdict, summary "looks like known anomaly X (p = …)", evidence
``signature`` (the file), ``application``, ``class``, ``p`` (the last window's), ``novel`` (its share of
lines no template of the signature matched), ``windows`` (how many in a row), ``window`` (lines per
window), ``remedy`` (the signature's hint for the class, ``""`` if none: the shipped policy maps it),
``lines`` (up to five of the last window's lines), ``dropped`` (lines not mined so far). ``confirm``
windows in a row with more novel lines than the signature's ``max_novel`` (a mix of messages the
signature never saw — an unknown anomaly, or a new version of the application): a LOG_ANOMALY verdict
(``rule`` ``"novel mix"``), evidence alike without ``class``. A window the network is unsure about
(``p < min_p``) gives neither, and breaks a streak.

**Bounds.** At most ``max_lines`` lines per observation are mined, and no more than ``max_feed_s`` of
time is spent on one (the rest dropped, counted in ``dropped``: a flood of lines never stalls the
supervisor); the miner is bounded (its default settings); the window is a count vector, not lines.
A signature that cannot be read is a config error naming the file (the factory's ``ValueError``).
``reset()`` starts the window and the streaks again (a new instance), keeping the mined templates.
"""

from __future__ import annotations

import math
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from enmei.detect.protocol import NOTHING, DetectorContext, Judgement, Limit
from enmei.detect.registry import DetectorOptions, register
from enmei.model import Observation, Severity, Verdict, VerdictKind

if TYPE_CHECKING:
    from enmei.logs.signatures import Signature

__all__ = ["LIBRARY_DIR", "LogSignatureDetector", "LogSignatureOptions", "resolve_signature"]

LIBRARY_DIR = Path(__file__).resolve().parent.parent / "logs" / "library"
_SAMPLES = 5
_CUT = 240
NORMAL = "normal"


class LogSignatureOptions(DetectorOptions):
    signature: str = Field(min_length=1)
    probe: str | None = None
    confirm: int = Field(default=2, ge=1, le=1000)
    min_p: float | None = Field(default=None, gt=0.0, le=1.0)
    hold_off_s: float = Field(default=300.0, ge=0)
    severity: Literal["info", "warning", "critical"] = "critical"
    max_lines: int = Field(default=2000, ge=1, le=1_000_000)
    max_feed_s: float = Field(default=0.05, gt=0, le=10.0)


def resolve_signature(ref: str) -> Path:
    """The file a ``signature`` option names: ``@enmei/NAME`` is ``NAME.signature.json`` of the shipped
    library, anything else a path (relative to the working directory)."""
    if ref.startswith("@enmei/"):
        return LIBRARY_DIR / f"{ref[len('@enmei/'):]}.signature.json"
    return Path(ref).expanduser()


class LogSignatureDetector:
    def __init__(self, unit: str, opts: LogSignatureOptions, signature: Signature, source: str) -> None:
        import numpy as np

        self.kind = "log_signature"
        self.name = opts.detector_name
        self.unit = unit
        self.opts = opts
        self.sig = signature
        self.source = source
        self._np = np
        self.miner, self.index = signature.miner()
        self._counts = np.zeros(len(signature.vocabulary))
        self._n = self._novel = 0
        self._samples: deque[str] = deque(maxlen=_SAMPLES)
        self._streak: tuple[str, int] = ("", 0)
        self._quiet_until = {VerdictKind.LOG_SIGNATURE: -math.inf, VerdictKind.LOG_ANOMALY: -math.inf}
        self.windows = self.dropped = self.mined = 0
        self.last: dict[str, Any] | None = None

    def feed(self, obs: Observation) -> Judgement:
        if not obs.lines or (self.opts.probe is not None and obs.probe != self.opts.probe):
            return NOTHING
        t = obs.mono if math.isfinite(obs.mono) else 0.0
        verdicts: list[Verdict] = []
        budget_end = time.perf_counter() + self.opts.max_feed_s
        lines = obs.lines
        take = min(len(lines), self.opts.max_lines)
        size = self.sig.window
        miner, index, counts = self.miner, self.index, self._counts
        done = 0
        for done in range(take):
            if done % 64 == 63 and time.perf_counter() > budget_end:
                break
            line = lines[done]
            i = index.get(miner.resolve(miner.add(line).template_id))
            if i is None:
                self._novel += 1
            else:
                counts[i] += 1
            self._n += 1
            self._samples.append(line[:_CUT])
            if self._n >= size:
                v = self._close_window(t, obs.probe)
                if v is not None:
                    verdicts.append(v)
        else:
            done = take
        mined = done if take else 0
        self.mined += mined
        self.dropped += len(lines) - mined
        return Judgement(tuple(verdicts)) if verdicts else NOTHING

    def _close_window(self, t: float, probe: str) -> Verdict | None:
        pred = self.sig.judge(self._counts / self._n, self._novel / self._n, self.opts.min_p)
        self.windows += 1
        self.last = {"label": pred.label, "top": pred.top, "p": pred.p, "novel": pred.novel}
        samples = list(self._samples)
        self._counts[:] = 0.0
        self._n = self._novel = 0
        if pred.label == "unknown" and pred.novel > self.sig.max_novel:
            what = "\0novel"
        elif pred.label not in ("unknown", NORMAL):
            what = pred.label
        else:
            self._streak = ("", 0)
            return None
        streak = self._streak[1] + 1 if self._streak[0] == what else 1
        self._streak = (what, streak)
        kind = VerdictKind.LOG_ANOMALY if what == "\0novel" else VerdictKind.LOG_SIGNATURE
        if streak < self.opts.confirm or t < self._quiet_until[kind]:
            return None
        self._quiet_until[kind] = t + self.opts.hold_off_s
        o, sig = self.opts, self.sig
        evidence: dict[str, Any] = {
            "signature": self.source, "application": sig.application, "p": pred.p, "novel": pred.novel,
            "windows": streak, "window": sig.window, "lines": samples, "dropped": self.dropped, "probe": probe}
        if kind is VerdictKind.LOG_ANOMALY:
            evidence["rule"] = "novel mix"
            summary = (f"a new mix of log messages for signature {sig.application!r}: {pred.novel:.0%} of the "
                       f"lines match none of its templates, {streak} windows in a row")
            severity = Severity.WARNING
        else:
            evidence.update({"class": what, "remedy": sig.remedies.get(what, ""),
                             "rule": f"{o.confirm} windows of {sig.window} lines at p >= {o.min_p or sig.min_p:g}"})
            summary = (f"looks like known anomaly {what} of {sig.application} (p = {pred.p:.2f}, "
                       f"{streak} windows of {sig.window} lines in a row)")
            severity = Severity(o.severity)
        return Verdict(self.unit, f"signature:{self.name}", kind, severity, t, summary, evidence)

    def reset(self) -> None:
        self._counts[:] = 0.0
        self._n = self._novel = 0
        self._samples.clear()
        self._streak = ("", 0)
        for k in self._quiet_until:
            self._quiet_until[k] = -math.inf

    def state(self) -> dict[str, Any]:
        return {"signature": self.source, "application": self.sig.application, "windows": self.windows,
                "mined": self.mined, "dropped": self.dropped, "in_window": self._n, "last": self.last,
                "streak": {"what": self._streak[0].replace("\0novel", "novel mix"), "windows": self._streak[1]}}

    def limits(self) -> dict[str, Limit]:
        return {}


def _build(ctx: DetectorContext, opts: LogSignatureOptions) -> LogSignatureDetector:
    from enmei.logs.signatures import Signature, SignatureFileError

    path = resolve_signature(opts.signature)
    try:
        sig = Signature.load(path)
    except SignatureFileError as exc:
        raise ValueError(str(exc)) from exc
    return LogSignatureDetector(ctx.unit, opts, sig, str(opts.signature))


register("log_signature", LogSignatureOptions, _build, example={"signature": "@enmei/demo", "confirm": 1})

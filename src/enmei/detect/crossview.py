"""Hidden processes: kind ``crossview`` (issue 17) — what the guest says it runs against what its memory holds.

The ``crossview`` probe (``enmei.monitor.crossview_probe``) compares, once per listing the guest prints
of its own ``/proc``, that listing with the task list and the pid tree read from the guest's memory after
it (``enmei.monitor.crossview.compare``). Each of its observations carries ``values`` —
``compared`` (1: a comparison was made; 0 with ``ok``: no new listing yet), ``hidden``,
``hidden_from_list`` — and one JSON line per
suspect in ``lines`` (``{"key", "pid", "comm", "ppid", "uid", "start_s", "how"}``; ``how`` is
``proc`` (missing from the guest's listing) or ``list`` (in the pid tree, not on the task list: a
kernel-level unlink)); ``ok`` false with ``error`` when no comparison could be made (the reason).

This detector judges persistence, not a single look: a suspect is reported only once the *same*
process (pid and start time) was a suspect in ``confirm`` consecutive comparisons — a process's start
or exit racing with one look never is. Verdicts:

* ``hidden_process`` (critical), once per process, evidence: the process, ``how``, in how many
  comparisons in a row;
* ``hidden_module`` (critical), once per module (name and address; suspect lines with ``what =
  "module"``: missing from the guest's ``/proc/modules`` (``how = "proc"``), or found by a scan of the
  modules area and on no module list (``how = "list"``)), the same evidence;
* ``hidden_file`` (critical), once per file (``what = "file"``: on the guest's data disk, read from
  outside, in the outside reads before and after a listing, and missing from the guest's own ``ls``);
* ``clean`` (info) after ``clean_after`` conclusive comparisons in a row with no confirmed suspect
  (then it counts again);
* ``inconclusive`` (info) after ``max_inconclusive`` failed observations (``ok`` false) in a row, with
  the last reason — never ``hidden_process`` from a view that could not be read.

Memory is bounded: at most ``max_suspects`` suspects and ``max_suspects`` reported keys are kept.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from typing import Any

from pydantic import Field

from enmei.detect.protocol import NOTHING, DetectorContext, HealthReport, Judgement, Limit
from enmei.detect.registry import DetectorOptions, register
from enmei.model import Health, Observation, Severity, Verdict, VerdictKind

__all__ = ["CrossviewDetector", "CrossviewOptions"]


class CrossviewOptions(DetectorOptions):
    """``probe``: the crossview probe's name; ``confirm``: comparisons in a row a suspect must stay one."""

    probe: str = "crossview"
    confirm: int = Field(default=2, ge=1, le=100)
    clean_after: int = Field(default=5, ge=1, le=10_000)
    max_inconclusive: int = Field(default=3, ge=1, le=10_000)
    max_suspects: int = Field(default=1024, ge=1, le=1_000_000)


class CrossviewDetector:
    """See the module docstring."""

    kind = "crossview"

    def __init__(self, unit: str, opts: CrossviewOptions) -> None:
        self.unit = unit
        self.opts = opts
        self.name = opts.detector_name
        self.reset()

    def reset(self) -> None:
        """Forget everything: a new boot has new processes."""
        self._streak: OrderedDict[str, int] = OrderedDict()
        self._reported: OrderedDict[str, None] = OrderedDict()
        self._clean = 0
        self._bad = 0
        self.comparisons = 0

    def feed(self, obs: Observation) -> Judgement:
        if obs.probe != self.opts.probe or not math.isfinite(obs.mono):
            return NOTHING
        try:
            compared = float(obs.values.get("compared", 0.0)) > 0
        except (TypeError, ValueError):
            compared = False
        if obs.ok and not compared:
            return NOTHING  # no new listing from the guest yet
        if not obs.ok:
            self._bad += 1
            if self._bad < self.opts.max_inconclusive:
                return NOTHING
            self._bad = 0
            reason = obs.error or "no comparison could be made"
            return self._verdict(VerdictKind.INCONCLUSIVE, obs.mono, f"cross-view inconclusive: {reason}",
                                 {"reason": reason, "in_a_row": self.opts.max_inconclusive})
        self._bad = 0
        self.comparisons += 1
        suspects = self._suspects(obs.lines)
        streak: OrderedDict[str, int] = OrderedDict()
        for key in suspects:
            streak[key] = self._streak.get(key, 0) + 1
            if len(streak) >= self.opts.max_suspects:
                break
        self._streak = streak  # a suspect missing from this comparison starts again from nothing
        verdicts = []
        for key, n in streak.items():
            if n >= self.opts.confirm and key not in self._reported:
                self._reported[key] = None
                while len(self._reported) > self.opts.max_suspects:
                    self._reported.popitem(last=False)
                s = suspects[key]
                ev = {**s, "comparisons_in_a_row": n, "confirm": self.opts.confirm}
                if s.get("what") == "file":
                    verdicts.append(Verdict(self.unit, self.name, VerdictKind.HIDDEN_FILE, Severity.CRITICAL,
                                            obs.mono, f"hidden file in the guest: {s.get('path')} is on its disk "
                                                      f"but not in its ls, in {n} comparisons in a row", ev))
                    continue
                if s.get("what") == "module":
                    how = ("on no module list (found by a scan of module memory)" if s.get("how") == "list"
                           else "missing from its /proc/modules")
                    verdicts.append(Verdict(self.unit, self.name, VerdictKind.HIDDEN_MODULE, Severity.CRITICAL,
                                            obs.mono, f"hidden kernel module in the guest: {s.get('name')} at "
                                                      f"{s.get('address')}, {how}, in {n} comparisons in a row", ev))
                    continue
                how = "unlinked from the kernel's task list" if s.get("how") == "list" else "missing from its /proc"
                verdicts.append(Verdict(self.unit, self.name, VerdictKind.HIDDEN_PROCESS, Severity.CRITICAL, obs.mono,
                                        f"hidden process in the guest: pid {s.get('pid')} ({s.get('comm')}), {how}, "
                                        f"in {n} comparisons in a row", ev))
        if verdicts:
            self._clean = 0
            health = (HealthReport(self.name, Health.FAILING, verdicts[0].summary),)
            return Judgement(tuple(verdicts), health)
        if any(n >= self.opts.confirm for n in streak.values()):
            return NOTHING  # still hidden, already said
        self._clean += 1
        if self._clean >= self.opts.clean_after:
            self._clean = 0
            return self._verdict(VerdictKind.CLEAN, obs.mono,
                                 f"cross-view clean: {self.opts.clean_after} comparisons without a hidden process "
                                 "or module",
                                 {"comparisons": self.opts.clean_after, "unconfirmed": len(streak)})
        return NOTHING

    def _suspects(self, lines: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for line in lines[: self.opts.max_suspects]:
            try:
                item = json.loads(line)
            except (ValueError, TypeError):
                continue
            if isinstance(item, dict) and isinstance(item.get("key"), str):
                out[item["key"]] = {k: v for k, v in item.items()
                                    if k in ("key", "what", "pid", "comm", "ppid", "uid", "start_s", "how",
                                             "name", "address", "state", "path")
                                    and isinstance(v, (str, int, float))}
        return out

    def _verdict(self, kind: VerdictKind, mono: float, summary: str, ev: dict[str, Any]) -> Judgement:
        return Judgement((Verdict(self.unit, self.name, kind, Severity.INFO, mono, summary, ev),))

    def state(self) -> dict[str, Any]:
        return {"comparisons": self.comparisons, "suspects": len(self._streak), "reported": list(self._reported),
                "clean_streak": self._clean}

    def limits(self) -> dict[str, Limit]:
        return {}


def _factory(ctx: DetectorContext, opts: CrossviewOptions) -> CrossviewDetector:
    return CrossviewDetector(ctx.unit, opts)


register("crossview", CrossviewOptions, _factory)

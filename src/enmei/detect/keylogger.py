"""Keyloggers and bots seen from outside the guest: kind ``keylogger`` (issue 16).

The monitor types keystroke bursts into a VM at random times and keeps silent *control* slots drawn
the same way (``enmei.monitor.schedule``). If the guest's disk writes or network output follow the
bursts more than they follow the controls, something in the guest reacts to typing: a keylogger. The
test is a **randomisation (permutation) test** over the slot labels: because the schedule drew which
slots get keys at random, under the null hypothesis "the guest's I/O does not depend on the keys" every
relabelling of the slots is as likely as the one that happened, whatever the guest does otherwise
(a periodic logger, a bursty backup job: their I/O is as likely after a control as after a burst). The
false-positive rate is therefore at most ``alpha`` by construction, not by a model of benign I/O.

The statistic, for each channel (``wr_operations``, ``wr_bytes``, ``tx_bytes`` by default) and each
response window (``windows_s``: from the burst's start to its end plus the window; the short ones see a
write-every-key logger, the long ones a logger that buffers keys and flushes them later or on a timer),
is the standardised difference of mean ranks of the response after keys and after controls; the test
takes the largest over channels and windows and compares it with the same maximum over
``permutations`` random relabellings, which keeps ``alpha`` for the whole family of lags. The schedule
draws the labels in blocks (``slot_block``: 12 slots, half keys, in a random order): the test then
rearranges labels only within each block, which is exactly how they were made (any order of a block's
slots seen so far is as likely); for slots without blocks (independent draws) it relabels them all,
every labelling with that many bursts being equally likely. The detector looks
first when ``2 * min_slots`` slots have finished, then every ``look_every`` slots, at most ``max_looks``
times per round, and spends ``alpha / max_looks`` on each look (Bonferroni), so a round's
false-positive rate stays at most ``alpha``.

Verdicts (evidence: channel, window, counts after keys and after controls, p-value, the threshold):

* ``keylogger_suspected`` (critical): the test rejects; or bait text typed by the monitor appeared in
  the guest's outbound traffic (``bait_found``: proof, no statistics needed).
* ``bot_suspected`` (critical): at least ``bot_min_episodes`` TCP connections the guest opened itself
  (``tx_syn``: SYN without ACK in its frames) that no connection opened from outside in the
  ``explain_s`` before and no injected burst explains, in a round. Without ``tx_syn`` counters: runs
  of ``tx_bytes`` of at least ``bot_min_bytes`` that no inbound bytes before them explain. This one is
  a rule, not a test: a guest that calls out on its own (an NTP client, an update check) is one too;
  see the README's limits.
* ``clean`` (info): ``max_looks`` looks without a rejection.
* ``inconclusive`` (info), with the reason: too few valid slots, slots lost to a paused guest or to
  keys the guest did not take, or a channel that moved in nearly every interval (``saturated_frac``:
  a flood saturates it and would hide a reaction).

Every verdict ends a round: the detector forgets the slots and starts counting again. Observations
come from the typing schedule (``enmei.monitor.schedule``; ``probe`` = its name); each carries the
cumulative counters and ``running``, and the one made when a slot ended also ``slot``: 1 for keys, 0 for
a control, with ``slot_start``, ``slot_end`` (monotonic times) and ``keys_dropped``. Memory is bounded
by ``max_samples``.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from enmei.detect.protocol import NOTHING, DetectorContext, HealthReport, Judgement, Limit
from enmei.detect.registry import DetectorOptions, register
from enmei.model import Health, Observation, Severity, Verdict, VerdictKind

__all__ = ["CHANNELS", "NEXT", "Finding", "KeyloggerDetector", "KeyloggerOptions", "Series", "Slot",
           "correlation_test", "outbound_test"]

#: The counters a response is read from (deltas per interval of the cumulative values observed).
CHANNELS = ("wr_operations", "wr_bytes", "tx_bytes")
_COUNTERS = (*CHANNELS, "rx_bytes", "tx_syn", "rx_syn")


@dataclass(frozen=True)
class Slot:
    """One slot of the schedule: keys typed (``inject``) or a silent control, from ``start`` to ``end``
    (monotonic seconds; a control's ``end`` is when a burst would have ended). ``dropped``: keys were
    not all delivered; such a slot does not count."""

    start: float
    end: float
    inject: bool
    dropped: bool = False
    block: int | None = None  # slots whose labels were drawn together (a shuffled block) share one
    phase: int = 0  # the schedule's phase (its slot spacing): each phase is also tested on its own
    next: float | None = None  # when the next slot starts (the silence after this one ends), if known

    def until_next(self, longest: float) -> float:
        """The end of the "until the next slot" window: the whole silence after the slot (at least the
        longest fixed window past its end)."""
        return max(self.end + longest, self.next) if self.next is not None else self.end + longest


@dataclass(frozen=True)
class Series:
    """Per-interval counter deltas: interval ``k`` spans ``times[k]`` to ``times[k + 1]``; ``channels``
    and ``running`` (the guest ran for the whole interval) have one entry per interval."""

    times: Sequence[float]
    channels: Mapping[str, Sequence[float]]
    running: Sequence[bool]

    @classmethod
    def from_samples(cls, samples: Sequence[tuple[float, Mapping[str, float], bool]]) -> Series:
        """The series between consecutive ``(mono, cumulative counters, running)`` samples. A counter
        that went down (a new QEMU) counts as zero for that interval."""
        times = [s[0] for s in samples]
        chans: dict[str, list[float]] = {c: [] for c in _COUNTERS}
        running: list[bool] = []
        for (_, a, ra), (_, b, rb) in itertools.pairwise(samples):
            for c in _COUNTERS:
                d = float(b.get(c, 0.0)) - float(a.get(c, 0.0))
                chans[c].append(d if math.isfinite(d) and d > 0 else 0.0)
            running.append(ra and rb)
        return cls(times, chans, running)


@dataclass(frozen=True)
class Finding:
    """What a test concluded: ``verdict`` is ``keylogger_suspected``, ``bot_suspected``, ``clean`` or
    ``inconclusive`` (then ``reason`` says why); ``evidence`` is JSON-ready."""

    verdict: str
    reason: str = ""
    p_value: float | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)


def _window_intervals(series: Series, start: float, stop: float) -> list[int] | None:
    """The intervals whose midpoint lies in [start, stop); None if the series does not reach ``stop``."""
    t = series.times
    if len(t) < 2 or t[-1] < stop:
        return None
    # midpoints grow with k: start from the first interval that ends after ``start``
    k = max(0, bisect.bisect_right(t, start) - 1)
    out: list[int] = []
    while k < len(t) - 1 and (t[k] + t[k + 1]) / 2 < stop:
        if (t[k] + t[k + 1]) / 2 >= start:
            out.append(k)
        k += 1
    return out


def _ranks(column: np.ndarray) -> np.ndarray:
    """Mid-ranks (ties share their mean rank)."""
    order = np.argsort(column, kind="mergesort")
    ranks = np.empty(len(column), dtype=float)
    sorted_vals = column[order]
    i = 0
    while i < len(column):
        j = i
        while j + 1 < len(column) and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


NEXT = "next"  # the window label of "from the slot's start until the next slot starts"


def correlation_test(slots: Sequence[Slot], series: Series, *, windows_s: Sequence[float] = (1.0, 3.0, 6.0),
                     channels: Sequence[str] = CHANNELS, alpha: float = 0.01, permutations: int = 999,
                     min_slots: int = 6, saturated_frac: float = 0.9, seed: int | None = None,
                     until_next: bool = True) -> Finding:
    """Do the ``channels`` react to the keys of ``slots`` more than to their controls? (see the module).

    ``alpha`` is the level of this one test. A slot counts if its longest window lies inside the series,
    the guest ran throughout it and its keys were delivered; with fewer than ``min_slots`` of either
    label the finding is ``inconclusive``. ``until_next``: slots that know when the next one starts
    get one more window, their whole silence (a logger that flushes on a timer shorter than the
    silence writes in it). The family of tests is every channel x window x group of slots (each
    schedule phase with ``min_slots`` of each label, or all slots when there is one phase or no
    phase has enough yet); each test's own permutation p-value is computed, and the smallest of them
    is compared with the smallest over the same relabellings (min-p), so ``alpha`` holds for the
    whole family whatever the groups' sizes.
    ``seed`` (default: derived from the data, so the same input gives the same answer) drives the
    relabellings. Never raises for odd data.
    """
    longest = max(windows_s)
    valid: list[Slot] = []
    paused = dropped = 0
    for s in slots:
        span = _window_intervals(series, s.start, s.until_next(longest) if until_next else s.end + longest)
        if span is None:
            continue  # not finished yet
        if s.dropped:
            dropped += 1
            continue
        if not span or not all(series.running[k] for k in span):
            paused += 1
            continue
        valid.append(s)
    n1 = sum(1 for s in valid if s.inject)
    n0 = len(valid) - n1
    counts = {"inject_slots": n1, "control_slots": n0, "paused_slots": paused, "dropped_slots": dropped}
    if n1 < min_slots or n0 < min_slots:
        why = [f"{n1} burst and {n0} control slots usable (at least {min_slots} of each needed)"]
        if paused:
            why.append(f"{paused} lost to a paused guest")
        if dropped:
            why.append(f"{dropped} with keys the guest did not take")
        return Finding("inconclusive", "; ".join(why), None, counts)
    n = len(valid)
    labels = np.asarray([1.0 if s.inject else 0.0 for s in valid])
    # the groups of slots tested: all, and each phase on its own when there are several (a phase of
    # short slots sees a quick logger sooner; one of long silences a logger that flushes late)
    # (all of them together would add tests, and so cost power, without adding a reaction the two
    # miss); a phase without min_slots of each label is not tested yet
    groups: list[tuple[str, np.ndarray]] = []
    phases = sorted({s.phase for s in valid})
    for ph in phases if len(phases) > 1 else []:
        m = np.asarray([s.phase == ph for s in valid])
        if labels[m].sum() >= min_slots and (1 - labels[m]).sum() >= min_slots:
            groups.append((f"phase {ph}", m))
    if not groups:
        groups.append(("all", np.ones(n, dtype=bool)))
    win_labels: list[float | str] = [float(w) for w in windows_s]
    if until_next and any(s.next is not None for s in valid):
        win_labels.append(NEXT)
    tests: list[tuple[str, float | str, str]] = []
    cols: list[np.ndarray] = []
    ranks_l: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for c in channels:
        values = series.channels.get(c)
        if values is None:
            continue
        for w in win_labels:
            resp = []
            for s in valid:
                stop = s.until_next(longest) if w == NEXT else s.end + float(w)
                span = _window_intervals(series, s.start, stop) or []
                resp.append(sum(float(values[k]) for k in span))
            col = np.asarray(resp, dtype=float)
            for gname, m in groups:
                r = np.zeros(n)
                r[m] = _ranks(col[m])
                tests.append((c, w, gname))
                cols.append(col)
                ranks_l.append(r)
                masks.append(m)
    if not cols:
        return Finding("inconclusive", f"none of the channels {', '.join(channels)} observed", None, counts)
    ranks = np.column_stack(ranks_l)  # (slots, tests): ranks within each test's group, 0 outside it
    member = np.column_stack(masks).astype(float)  # (slots, tests)
    size = member.sum(axis=0)
    # each test's rank variance within its group is the same under every relabelling
    mean_r = ranks.sum(axis=0) / size
    var = (member * (ranks - mean_r) ** 2).sum(axis=0) / size

    def stat(lab: np.ndarray) -> np.ndarray:  # lab: (k, n) -> per test z, shape (k, tests)
        k1 = lab @ member  # bursts in each test's group, per labelling
        k0 = size - k1
        ok = (k1 > 0) & (k0 > 0) & (var > 0)
        s1 = lab @ ranks
        s0 = ranks.sum(axis=0) - s1
        diff = s1 / np.where(ok, k1, 1.0) - s0 / np.where(ok, k0, 1.0)
        scale = np.sqrt(var * (1.0 / np.where(ok, k1, 1.0) + 1.0 / np.where(ok, k0, 1.0)))
        return np.asarray(np.where(ok, diff / np.where(ok, scale, 1.0), 0.0))

    per_test = stat(labels[None, :])[0]
    if seed is None:
        digest = hashlib.sha256(repr([(round(s.start, 3), s.inject) for s in valid]).encode()).digest()
        seed = int.from_bytes(digest[:8], "little")
    rng = np.random.default_rng(seed)
    if permutations and all(s.block is not None for s in valid):
        # a blocked design: within each block the labels were a random arrangement of a fixed number of
        # each, so any arrangement of the block's slots seen so far is as likely: only that is redrawn
        members: dict[int, list[int]] = {}
        for i, s in enumerate(valid):
            members.setdefault(int(s.block or 0), []).append(i)
        perms = np.tile(labels, (permutations, 1))
        for idx in members.values():
            if len(idx) > 1:
                where = np.asarray(idx)
                order = rng.random((permutations, len(idx))).argsort(axis=1)
                perms[:, where] = labels[where][order]
    elif permutations:
        perms = np.stack([rng.permutation(labels) for _ in range(permutations)])
    else:
        perms = np.empty((0, n))
    # each test's own permutation p-value, then the smallest of them calibrated over the same
    # relabellings (min-p): tests on groups of different sizes reach different z, not different p
    null = stat(perms) if permutations else np.empty((0, len(tests)))
    k = null.shape[0]
    obs_p = np.empty(len(tests))
    null_minp = np.ones(k)
    for t in range(len(tests)):
        ordered = np.sort(null[:, t])
        # how many relabellings reach at least each value: their p-values, and the observed one's
        at_least = k - np.searchsorted(ordered, null[:, t] - 1e-9, side="left")
        null_minp = np.minimum(null_minp, at_least / (k + 1))
        obs_p[t] = (1 + (k - np.searchsorted(ordered, per_test[t] - 1e-9, side="left"))) / (k + 1)
    best = int(np.argmin(obs_p - 1e-6 * per_test))  # the smallest p; of equal ones the largest z
    observed_z = float(per_test[best])
    p = (1 + int(np.sum(null_minp <= obs_p[best] + 1e-12))) / (1 + permutations)
    channel, window, group = tests[best]
    col = cols[best]
    m = masks[best]
    lab = labels[m]
    colm = col[m]
    active1 = int(np.sum((colm > 0) & (lab == 1)))
    active0 = int(np.sum((colm > 0) & (lab == 0)))
    evidence = {**counts, "channel": channel, "window_s": window, "slots_tested": group,
                "z": round(observed_z, 3), "p_value": round(p, 6), "alpha": alpha, "permutations": permutations,
                "tested_bursts": int(lab.sum()), "tested_controls": int(len(lab) - lab.sum()),
                "active_after_keys": active1, "active_after_controls": active0,
                "mean_after_keys": round(float(colm[lab == 1].mean()), 3),
                "mean_after_controls": round(float(colm[lab == 0].mean()), 3)}
    if p <= alpha:
        return Finding("keylogger_suspected", "", p, evidence)
    for c in channels:
        values = series.channels.get(c)
        if not values:
            continue
        ran = [v for v, r in zip(values, series.running, strict=False) if r]
        busy = sum(1 for v in ran if v > 0) / max(1, len(ran))
        if busy >= saturated_frac:
            return Finding("inconclusive", f"{c} moved in {busy:.0%} of the intervals: a flood that saturates"
                           " it would hide a reaction to keys", p, evidence)
    return Finding("clean", "", p, evidence)


def outbound_test(slots: Sequence[Slot], series: Series, *, explain_s: float = 2.0, react_s: float = 6.0,
                  min_bytes: float = 600.0, min_episodes: int = 2) -> Finding:
    """Outbound traffic that nothing explains (see the module): ``bot_suspected`` with the episodes'
    times and bytes, else ``clean``. An episode is explained by inbound bytes within ``explain_s``
    before it starts, or by a burst of keys that began up to ``react_s`` before it (reacting to keys is
    the correlation test's business). Intervals of a paused guest are skipped."""
    t = series.times
    bursts = [s for s in slots if s.inject]
    opened = series.channels.get("tx_syn")
    if opened is not None and any(v > 0 for v in opened):
        # TCP connections the guest opened: a call it made, explained only by one opened from outside
        # (an inbound request) within explain_s before, or by typing
        inbound = series.channels.get("rx_syn") or [0.0] * len(opened)
        episodes = [(k, k) for k, v in enumerate(opened) if v > 0 and series.running[k]]
        unexplained: list[dict[str, float]] = []
        for a, _ in episodes:
            start = t[a]
            first = bisect.bisect_left(t, start - explain_s)
            asked = sum(float(inbound[i]) for i in range(first, a + 1))
            keyed = any(s.start <= start + 1e-9 and start <= s.end + react_s for s in bursts)
            if not asked and not keyed:
                unexplained.append({"at": round(start, 3), "connections": float(opened[a])})
        evidence = {"episodes": len(episodes), "unexplained": len(unexplained), "first": unexplained[:5],
                    "rule": "TCP connections the guest opened", "explain_s": explain_s}
        if len(unexplained) >= min_episodes:
            return Finding("bot_suspected", "", None, evidence)
        return Finding("clean", "", None, evidence)
    tx = series.channels.get("tx_bytes")
    rx = series.channels.get("rx_bytes")
    if tx is None or rx is None:
        return Finding("inconclusive", "no network counters observed")
    episodes = []
    k = 0
    while k < len(tx):
        if tx[k] >= min_bytes and series.running[k]:
            j = k
            while j + 1 < len(tx) and tx[j + 1] > 0 and series.running[j + 1]:
                j += 1
            episodes.append((k, j))
            k = j + 1
        else:
            k += 1
    unexplained = []
    for a, b in episodes:
        start = t[a]
        first = bisect.bisect_left(t, start - explain_s)
        inbound_bytes = sum(float(rx[i]) for i in range(first, min(a, len(rx))))
        keyed = any(s.start <= start + 1e-9 and start <= s.end + react_s for s in bursts)
        if inbound_bytes > 0 or keyed:
            continue
        unexplained.append({"at": round(start, 3), "tx_bytes": float(sum(tx[a:b + 1]))})
    evidence = {"episodes": len(episodes), "unexplained": len(unexplained), "first": unexplained[:5],
                "min_bytes": min_bytes, "explain_s": explain_s}
    if len(unexplained) >= min_episodes:
        return Finding("bot_suspected", "", None, evidence)
    return Finding("clean", "", None, evidence)


class KeyloggerOptions(DetectorOptions):
    injector: str = "typing-schedule"
    alpha: float = Field(default=0.01, gt=0, lt=0.5)  # the false-positive rate of one round, at most
    windows_s: tuple[float, ...] = (1.0, 3.0, 6.0)
    channels: tuple[str, ...] = CHANNELS
    min_slots: int = Field(default=6, ge=3, le=1000)
    max_looks: int = Field(default=6, ge=1, le=1000)
    look_every: int = Field(default=4, ge=1, le=1000)  # finished slots between two looks
    # the finished-slot counts to look at (a sequential test: alpha / len(looks) each); replaces the
    # first look at 2 * min_slots and then every look_every, and max_looks
    looks: tuple[int, ...] | None = None
    # with looks: the share of alpha each look spends (Bonferroni with weights; summing to at most 1),
    # default equal shares
    look_alpha: tuple[float, ...] | None = None
    until_next: bool = True  # one more window: a slot's whole silence, until the next slot starts
    permutations: int = Field(default=4999, ge=99, le=20_000)
    saturated_frac: float = Field(default=0.9, gt=0, le=1)
    bot_min_bytes: float = Field(default=600.0, ge=0)
    bot_min_episodes: int = Field(default=2, ge=1)
    explain_s: float = Field(default=2.0, ge=0)
    max_samples: int = Field(default=4000, ge=10, le=100_000)

    @field_validator("windows_s")
    @classmethod
    def _windows(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(not (0 < w <= 600) for w in v):
            raise ValueError("windows_s: one or more windows, each in (0, 600] seconds")
        return tuple(sorted(v))

    @field_validator("looks")
    @classmethod
    def _looks(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and (not v or any(n < 2 or n > 10_000 for n in v) or len(set(v)) != len(v)):
            raise ValueError("looks: distinct finished-slot counts, each in [2, 10000]")
        return tuple(sorted(v)) if v is not None else None

    @model_validator(mode="after")
    def _look_alpha(self) -> KeyloggerOptions:
        w = self.look_alpha
        if w is not None and (self.looks is None or len(w) != len(self.looks) or any(x <= 0 for x in w)
                              or sum(w) > 1 + 1e-9):
            raise ValueError("look_alpha: one positive share of alpha per look (looks), summing to at most 1")
        return self

    def alpha_at(self, look: int) -> float:
        """The level of the ``look``-th look (0-based) of a round."""
        if self.look_alpha is not None:
            return self.alpha * self.look_alpha[min(look, len(self.look_alpha) - 1)]
        return self.alpha / self.n_looks

    @property
    def n_looks(self) -> int:
        """How many looks a round has: ``alpha`` is split over them."""
        return len(self.looks) if self.looks is not None else self.max_looks

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [c for c in v if c not in CHANNELS]
        if not v or bad:
            raise ValueError(f"channels: a non-empty subset of {', '.join(CHANNELS)} (not {bad})")
        return v


class KeyloggerDetector:
    """The unit detector over a schedule injector's observations (see the module)."""

    def __init__(self, unit: str, opts: KeyloggerOptions) -> None:
        self.kind = "keylogger"
        self.name = opts.detector_name
        self.unit = unit
        self.opts = opts
        # the series so far: sample times, and per interval between two samples the counter deltas
        self._times: deque[float] = deque(maxlen=opts.max_samples)
        self._deltas: dict[str, deque[float]] = {c: deque(maxlen=opts.max_samples - 1) for c in _COUNTERS}
        self._running: deque[bool] = deque(maxlen=opts.max_samples - 1)
        self._prev: tuple[Mapping[str, float], bool] | None = None
        self._slots: deque[Slot] = deque(maxlen=opts.max_samples)
        self._looked = 0
        self._last_looked_slots = 0
        self._next_look = self._first_look()
        self._pending_look = 0  # a planned look put off by a retry at the next slot (0: none)
        self._bot_done = False
        self.last: Finding | None = None
        self.rounds = 0

    def _first_look(self) -> int:
        return self.opts.looks[0] if self.opts.looks is not None else 2 * self.opts.min_slots

    @property
    def source(self) -> str:
        return f"keylogger:{self.opts.injector}"

    def feed(self, obs: Observation) -> Judgement:
        if obs.probe != self.opts.injector or not math.isfinite(obs.mono):
            return NOTHING
        vals = obs.values
        try:
            counters = {c: float(vals[c]) for c in _COUNTERS if c in vals}
            running = float(vals.get("running", 1.0)) > 0
        except (TypeError, ValueError):
            return NOTHING
        if not obs.ok:
            running = False  # the counters could not be read: the interval does not count
        if self._times and obs.mono <= self._times[-1]:
            return NOTHING
        if self._prev is not None:
            before, ran = self._prev
            for c in _COUNTERS:
                d = counters.get(c, 0.0) - before.get(c, 0.0)
                self._deltas[c].append(d if math.isfinite(d) and d > 0 else 0.0)  # a new QEMU starts at 0
            self._running.append(ran and running)
        self._times.append(obs.mono)
        self._prev = (counters, running)
        slot = vals.get("slot")
        try:
            if slot is not None and math.isfinite(float(slot)):
                start = float(vals.get("slot_start", obs.mono))
                start = start if math.isfinite(start) and start <= obs.mono else obs.mono
                end = float(vals.get("slot_end", obs.mono))
                end = end if math.isfinite(end) and end >= start else start
                raw_block = vals.get("slot_block")
                block = int(raw_block) if raw_block is not None and math.isfinite(float(raw_block)) else None
                phase = int(float(vals.get("slot_phase", 0.0)))
                raw_next = vals.get("slot_next")
                nxt = float(raw_next) if raw_next is not None else None
                nxt = nxt if nxt is not None and math.isfinite(nxt) and nxt >= end else None
                self._slots.append(Slot(start, end, float(slot) > 0, float(vals.get("keys_dropped", 0.0)) > 0,
                                        block, phase, nxt))
        except (TypeError, ValueError):
            pass  # a malformed slot is no slot
        if float(vals.get("bait_found", 0.0) or 0.0) > 0:
            return self._conclude(obs.mono, Finding("keylogger_suspected", "", 0.0, {
                "bait_found": int(float(vals["bait_found"])), "channel": "bait",
                "rule": "bait text typed into the guest appeared in its outbound traffic"}))
        return self._look(obs.mono)

    def _look(self, now: float) -> Judgement:
        o = self.opts
        last = self._times[-1]
        longest = max(o.windows_s)
        finished = sum(1 for s in self._slots if (s.until_next(longest) if o.until_next else s.end + longest) <= last)
        if finished == self._last_looked_slots and len(self._times) % 10:
            return NOTHING  # nothing new to test (the bot rule is checked every tenth sample too)
        series = Series(list(self._times), {c: list(d) for c, d in self._deltas.items()}, list(self._running))
        if not self._bot_done:
            bot = outbound_test(list(self._slots), series, explain_s=o.explain_s, react_s=max(o.windows_s),
                                min_bytes=o.bot_min_bytes, min_episodes=o.bot_min_episodes)
            if bot.verdict == "bot_suspected":
                self._bot_done = True  # once per round
                return self._conclude(now, bot, keep=True)
        if finished == self._last_looked_slots:
            return NOTHING
        self._last_looked_slots = finished
        if finished < self._next_look:
            return NOTHING
        if o.looks is not None:
            later = [n for n in o.looks if n > finished]
            self._next_look = later[0] if later else finished + o.look_every
        else:
            self._next_look = finished + o.look_every
        if self._pending_look > finished:
            # this look came early, retried after one that had too few usable slots: the looks after
            # it keep their planned places (an early look must not pull the next ones forward and spend
            # the round's looks on fewer slots than planned)
            self._next_look = self._pending_look
        planned, self._pending_look = self._next_look, 0
        found = correlation_test(list(self._slots), series, windows_s=o.windows_s, channels=o.channels,
                                 alpha=o.alpha_at(self._looked), permutations=o.permutations, min_slots=o.min_slots,
                                 saturated_frac=o.saturated_frac, until_next=o.until_next)
        if found.verdict == "inconclusive" and found.p_value is None:
            # not enough usable slots yet (a paused guest, dropped keys): wait, unless the round has
            # had as many slots as all its looks would take
            # (with looks: up to look_every slots past the last one, for slots lost on the way)
            enough = (o.looks[-1] + o.look_every if o.looks is not None
                      else 2 * o.min_slots + o.max_looks * o.look_every)
            if finished < enough:
                # no test was made (no alpha spent): try again at the next finished slot rather
                # than at the next planned look (a slot lost early would cost a whole phase)
                self._pending_look = planned
                self._next_look = finished + 1
                return NOTHING
            return self._conclude(now, found)
        self._looked += 1
        if found.verdict == "keylogger_suspected" or self._looked >= o.n_looks:
            return self._conclude(now, found)
        return NOTHING

    def _conclude(self, now: float, found: Finding, *, keep: bool = False) -> Judgement:
        self.last = found
        ev = {**found.evidence, "injector": self.opts.injector, "alpha": self.opts.alpha,
              "look_level": found.evidence.get("alpha"),
              "looks": self._looked, "max_looks": self.opts.n_looks}
        if found.reason:
            ev["reason"] = found.reason
        kind = {"keylogger_suspected": VerdictKind.KEYLOGGER_SUSPECTED, "bot_suspected": VerdictKind.BOT_SUSPECTED,
                "clean": VerdictKind.CLEAN}.get(found.verdict, VerdictKind.INCONCLUSIVE)
        bad = kind in (VerdictKind.KEYLOGGER_SUSPECTED, VerdictKind.BOT_SUSPECTED)
        if kind is VerdictKind.KEYLOGGER_SUSPECTED:
            if "bait_found" in ev:
                summary = "keylogger suspected: bait typed into the guest left it over the network"
            else:
                w = ev.get("window_s")
                within = "before the next slot" if w == NEXT else f"within {w:g} s"
                summary = (f"keylogger suspected: {ev.get('channel')} follows typed keys {within}"
                           f" (p = {found.p_value:.4g} <= {found.evidence.get('alpha', 0.0):.4g};"
                           f" active after {ev.get('active_after_keys')}/{ev.get('inject_slots')} bursts,"
                           f" {ev.get('active_after_controls')}/{ev.get('control_slots')} controls)")
        elif kind is VerdictKind.BOT_SUSPECTED:
            summary = f"bot suspected: {ev.get('unexplained')} outbound bursts that no request or input explains"
        elif kind is VerdictKind.CLEAN:
            summary = f"no reaction to typed keys ({self._looked} looks, smallest p = {found.p_value})"
        else:
            summary = f"keylogger test inconclusive: {found.reason}"
        verdict = Verdict(self.unit, self.source, kind, Severity.CRITICAL if bad else Severity.INFO, now, summary,
                          _plain(ev))
        health = (HealthReport(self.source, Health.FAILING if bad else Health.OK, summary),)
        if not keep:
            self._new_round()
        return Judgement((verdict,), health)

    def _new_round(self) -> None:
        self.rounds += 1
        last = self._times[-1] if self._times else None
        self._forget()
        if last is not None:
            self._times.append(last)  # the next interval starts here (self._prev is kept)
        self._slots.clear()
        self._looked = 0
        self._last_looked_slots = 0
        self._next_look = self._first_look()
        self._pending_look = 0  # a planned look put off by a retry at the next slot (0: none)
        self._bot_done = False

    def peek(self) -> Finding:
        """The correlation test on the round so far, at the round's whole ``alpha``, changing nothing:
        why a round that ran out of time reached no verdict (a report, not a verdict)."""
        o = self.opts
        series = Series(list(self._times), {c: list(d) for c, d in self._deltas.items()}, list(self._running))
        return correlation_test(list(self._slots), series, windows_s=o.windows_s, channels=o.channels,
                                alpha=o.alpha, permutations=o.permutations, min_slots=o.min_slots,
                                saturated_frac=o.saturated_frac, until_next=o.until_next)

    def _forget(self) -> None:
        self._times.clear()
        self._running.clear()
        for d in self._deltas.values():
            d.clear()

    def reset(self) -> None:
        """A new guest: forget the round (its slots and counters); the round count stays."""
        self._forget()
        self._prev = None
        self._slots.clear()
        self._looked = 0
        self._last_looked_slots = 0
        self._next_look = self._first_look()
        self._pending_look = 0  # a planned look put off by a retry at the next slot (0: none)
        self._bot_done = False
        self.last = None

    def state(self) -> dict[str, Any]:
        last = self.last
        return {"injector": self.opts.injector, "alpha": self.opts.alpha, "slots": len(self._slots),
                "looks": self._looked, "rounds": self.rounds,
                "last": None if last is None else {"verdict": last.verdict, "reason": last.reason,
                                                   "p_value": last.p_value}}

    def limits(self) -> dict[str, Limit]:
        return {}


def _plain(ev: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-ready evidence (no NaN, no numpy scalars)."""
    out: dict[str, Any] = {}
    for k, raw in ev.items():
        v = raw.item() if isinstance(raw, (np.floating, np.integer)) else raw
        out[k] = None if isinstance(v, float) and not math.isfinite(v) else v
    return out


def _build(ctx: DetectorContext, opts: KeyloggerOptions) -> KeyloggerDetector:
    return KeyloggerDetector(ctx.unit, opts)


register("keylogger", KeyloggerOptions, _build, example={"injector": "typing"})

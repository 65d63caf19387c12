"""Alerts, bounded: how many are journaled and sent, how many alert commands run at once, and what
happens to the rest (coalesced into one counted record, never silently lost).

A policy returning 32 alerts on every tick used to start 32 alert-command processes a second (64 running
at once). Now:

* **Rate.** Each source (a policy's decisions; the engine's own alerts: escalations, journal trouble)
  has a bucket of ``burst`` alerts refilled over ``per_s`` seconds. An alert within it is journaled
  (``alert`` record) and sent to the command; one beyond it is counted, by unit and severity, and not
  journaled on its own. A flood from a policy never uses up the engine's own alerts.
* **Coalescing.** The same alert (unit, severity, message) again within ``per_s`` of the last one sent
  is counted, not repeated.
* **Counted drop.** At the next ``flush`` after a window in which anything was counted (the engine
  flushes every tick), one ``alert`` record says how many alerts were coalesced, by unit, severity and
  reason (``coalesced``, ``by_unit``), and is sent to the command like any alert.
* **Concurrency.** At most ``max_running`` alert-command processes run at once; at most ``max_queued``
  payloads wait their turn. A payload that finds the queue full is dropped from the command (it is in
  the journal already) and counted in the next summary (``command_dropped``). Failures of the command
  are journaled once per window and counted after that.

The decision that raised an alert is always journaled (by the engine, before the alert): what the
policy asked for is on the record even when its alert was coalesced.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from enmei.clock import Clock
from enmei.model import RecordKind, Severity

__all__ = ["AlertGate"]

log = logging.getLogger(__name__)

RecordFn = Callable[[str, str | None, Mapping[str, Any]], int]
Runner = Callable[[Mapping[str, Any]], Awaitable[str | None]]  # payload -> why it failed, or None
SpawnFn = Callable[[Any, str], Any]


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class _Window:
    since: float
    coalesced: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (unit, severity, why)
    command_dropped: int = 0
    command_failed: int = 0
    failure_journaled: bool = False

    def empty(self) -> bool:
        return not self.coalesced and not self.command_dropped and not self.command_failed


class AlertGate:
    """Journals and sends alerts within bounds (see the module docstring). Call from the loop only."""

    def __init__(self, clock: Clock, *, record: RecordFn, spawn: SpawnFn, runner: Runner | None,
                 burst: int = 10, per_s: float = 10.0, max_running: int = 2, max_queued: int = 16) -> None:
        self.clock = clock
        self.runner = runner  # None: no alert command configured
        self.burst = burst
        self.per_s = per_s
        self.max_running = max_running
        self.max_queued = max_queued
        self._record = record
        self._spawn = spawn
        self._buckets: dict[str, _Bucket] = {}
        self._last_sent: dict[tuple[str | None, str, str], float] = {}
        self._window = _Window(clock.monotonic())
        self._queue: deque[Mapping[str, Any]] = deque()
        self.running = 0
        self.most_running = 0  # the high-water mark, for tests and the curious
        self.coalesced_total = 0

    def alert(self, unit: str | None, message: str, severity: Severity, data: Mapping[str, Any],
              source: str = "engine") -> int | None:
        """Journal and send one alert, or count it (returns the record's seq, or None if coalesced)."""
        now = self.clock.monotonic()
        key = (unit, str(severity), message)
        last = self._last_sent.get(key)
        if last is not None and now - last < self.per_s:
            self._count(unit, severity, "repeated")
            return None
        if not self._take(source, now):
            self._count(unit, severity, f"over {self.burst} alerts per {self.per_s:g}s from {source}")
            return None
        self._last_sent[key] = now
        if len(self._last_sent) > 1024:
            self._last_sent = {k: t for k, t in self._last_sent.items() if now - t < self.per_s}
        body = {"severity": str(severity), "message": message, **data}
        seq = self._record(RecordKind.ALERT, unit, body)
        log.log(logging.ERROR if severity is Severity.CRITICAL else logging.WARNING, "ALERT %s", message)
        self._send({"seq": seq, "unit": unit, **body})
        return seq

    def flush(self, *, final: bool = False) -> int | None:
        """Journal (and send) what the window counted, if anything, once it is ``per_s`` old (at once when
        ``final``: the supervisor is stopping); then start a new window."""
        now = self.clock.monotonic()
        w = self._window
        if w.empty() or (now - w.since < self.per_s and not final):
            return None
        self._window = _Window(now)
        total = sum(w.coalesced.values())
        by_unit: Counter[str] = Counter()
        for (unit, _, _), n in w.coalesced.items():
            by_unit[unit] += n
        body: dict[str, Any] = {
            "severity": "warning",
            "message": f"{total} alert(s) coalesced in the last {now - w.since:.0f}s"
                       + (f"; {w.command_dropped} not sent to the alert command (too many waiting)"
                          if w.command_dropped else "")
                       + (f"; the alert command failed {w.command_failed} more time(s)" if w.command_failed else ""),
            "coalesced": total, "by_unit": dict(by_unit),
            "by_reason": {f"{u}|{sev}|{why}": n for (u, sev, why), n in w.coalesced.items()},
            "command_dropped": w.command_dropped, "command_failed": w.command_failed,
            "window_s": round(now - w.since, 3)}
        seq = self._record(RecordKind.ALERT, None, body)
        if not final:  # when stopping, no new alert command is started (nothing would wait for it)
            self._send({"seq": seq, "unit": None, **body})
        return seq

    # -- inside ------------------------------------------------------------------------------------

    def _take(self, source: str, now: float) -> bool:
        b = self._buckets.get(source)
        if b is None:
            b = self._buckets[source] = _Bucket(float(self.burst), now)
        b.tokens = min(float(self.burst), b.tokens + (now - b.stamp) * self.burst / self.per_s)
        b.stamp = now
        if b.tokens < 1.0:
            return False
        b.tokens -= 1.0
        return True

    def _count(self, unit: str | None, severity: Severity, why: str) -> None:
        self._window.coalesced[(unit or "", str(severity), why)] += 1
        self.coalesced_total += 1

    def _send(self, payload: Mapping[str, Any]) -> None:
        if self.runner is None:
            return
        if self.running < self.max_running:
            self._start(payload)
        elif len(self._queue) < self.max_queued:
            self._queue.append(payload)
        else:
            self._window.command_dropped += 1

    def _start(self, payload: Mapping[str, Any]) -> None:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        self._spawn(self._run(payload), "alert command")

    async def _run(self, payload: Mapping[str, Any]) -> None:
        assert self.runner is not None
        try:
            problem = await self.runner(payload)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken runner must not stop the next alerts
            problem = f"alert command failed: {type(exc).__name__}: {exc}"
        finally:
            self.running -= 1
            if self._queue and self.running < self.max_running:
                self._start(self._queue.popleft())
        if problem is not None:
            w = self._window
            if not w.failure_journaled:  # the first failure of a window is journaled, the rest counted
                w.failure_journaled = True
                self._record(RecordKind.ALERT, payload.get("unit"), {"severity": "warning", "message": problem})
            else:
                w.command_failed += 1

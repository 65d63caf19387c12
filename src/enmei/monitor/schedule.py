"""The typing schedule: keystroke bursts at random times, silent control slots, counters in between.

What the ``keylogger`` detector (``enmei.detect.keylogger``) needs to tell a guest that reacts to
typing from one that is merely busy: a slot every ``gap_s`` (plus a random ``jitter_s``), labelled in
blocks of ``block_slots``: half keys, half silent controls, in a random order — every round has enough
of each, and the detector's test redraws exactly that order; between slots, every
``interval_s``, one observation with the guest's cumulative block-write and network counters and whether its CPUs ran.

* Keys are never typed while the guest is paused (QEMU would queue them, or refuse ``input-send-event``):
  such a burst is recorded as dropped, and so is one the backend could not send, or (with a console to
  check) one after which the guest echoed no line at all — the detector does not count them. A line
  echoed with keys missing (a guest too slow to drain its keyboard under TCG loses some) is recorded
  as ``echo: partial``: it was still typing the guest saw.
* Each burst is ``chars`` keys in all (Enter included): random lowercase words, and in half of them the
  bait, a fake password (``pw=`` and ``BAIT_SECRET`` random letters and digits) drawn once per
  schedule. A burst is at least as long as a keylogger's buffer it should fill (the default 24 keys:
  one that writes every 24 keys writes at every burst, not every second one). If the guest's outbound
  traffic reaches a sink file (``sink``: a ``guestfwd`` to a command that appends what it receives),
  every new byte of it is searched for the bait; a find is in the next observation as ``bait_found``.
  The search tolerates ``BAIT_MISSING`` lost keys (:func:`bait_pattern`: a keylogger sends what the
  guest got, and a guest under TCG loses some keys), which keeps a chance match negligible: every
  variant keeps at least 8 of the 10 random characters in order, at most 92 variants × 36⁻⁸ ≈ 3·10⁻¹¹
  per byte of traffic the monitor did not type.
* Every injection is recorded when it is made, through ``record(kind, detail)`` (the caller journals it):
  ``inject`` with the slot's label, start, end, text length, and whether the keys were delivered.

The schedule acts and observes; it does not judge. It stops after ``max_slots`` slots, ``max_s``
seconds, or when ``emit`` returns true (the detector reached a verdict), whichever is first.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from enmei.clock import Clock
from enmei.errors import VisorError
from enmei.model import Observation

__all__ = ["BAIT_MISSING", "BAIT_SECRET", "ScheduleSettings", "TypingSchedule", "TypingTarget", "bait_pattern"]

BAIT_SECRET = 10  # random characters after "pw="
BAIT_MISSING = 2  # keys of the bait that may be lost on the way and still make a find


def bait_pattern(bait: str, missing: int = BAIT_MISSING) -> re.Pattern[bytes]:
    """A pattern matching ``bait`` with up to ``missing`` of its characters lost (deleted anywhere): the
    longest variants first, so a whole bait is one find, not several."""
    variants = {bait}
    for k in range(1, missing + 1):
        for gone in itertools.combinations(range(len(bait)), k):
            variants.add("".join(c for i, c in enumerate(bait) if i not in gone))
    ordered = sorted(variants, key=lambda v: (-len(v), v))
    return re.compile(b"|".join(re.escape(v.encode()) for v in ordered))


class TypingTarget(Protocol):
    """What the schedule needs of a backend (``QemuBackend`` has it all)."""

    async def send_keys(self, name: str, text: str) -> None: ...

    async def block_stats(self, name: str) -> dict[str, dict[str, float]]: ...

    async def net_stats(self, name: str) -> dict[str, float]: ...

    async def guest_running(self, name: str) -> bool: ...


@dataclass(frozen=True)
class ScheduleSettings:
    interval_s: float = 0.25
    gap_s: float = 5.5  # between slot starts, at least: more than a burst plus the longest window
    jitter_s: float = 1.0
    block_slots: int = 12  # labels are drawn per block: half keys, half controls, shuffled
    chars: tuple[int, int] = (24, 28)  # a burst's keys in all (words, maybe the bait, Enter), in this range
    key_gap_s: float = 0.1  # between two keys: a guest under TCG on a loaded host loses keys typed faster
    # a burst's line must show on the console this soon after its last key (with a console): about a slot,
    # since a guest that does work per key (a keylogger syncing each one) echoes seconds late under TCG
    echo_timeout_s: float = 6.0
    max_slots: int = 60
    max_s: float = 600.0
    # a first phase of short slots (0: none): a logger that writes as keys come is seen in fewer seconds;
    # the slots after it are spaced by gap_s, whose silences catch one that flushes on a timer
    fast_slots: int = 0
    fast_gap_s: float = 2.0
    fast_jitter_s: float = 0.4
    # the silence between the end of a burst (or a control) and the next slot, at least: in the fast
    # phase, and after it (longer than a plausible flush period of a logger that writes on a timer)
    fast_quiet_s: float = 0.3
    min_quiet_s: float = 0.3
    # a burst ends when the guest has echoed its line (it has taken every key: a logger that does work
    # per key is done with it), not when the last key was sent; a control lasts as long as bursts do
    end_at_echo: bool = False


@dataclass
class _Pending:
    index: int
    start: float
    inject: bool
    text: str
    task: asyncio.Task[bool] | None = None
    end: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    phase: int = 0
    block: int = 0
    next: float | None = None  # when the next slot started

    @property
    def typing(self) -> bool:
        return self.task is not None and self.end is None


class TypingSchedule:
    """One schedule on one unit (see the module). ``seed`` fixes every random choice (recorded by the
    caller, so that a run can be told apart and repeated)."""

    def __init__(self, target: TypingTarget, unit: str, clock: Clock, *, seed: int,
                 name: str = "typing-schedule", settings: ScheduleSettings | None = None,
                 sink: Path | None = None, console: Path | None = None,
                 record: Callable[[str, Mapping[str, Any]], None] | None = None) -> None:
        self.target = target
        self.unit = unit
        self.clock = clock
        self.name = name
        self.settings = settings or ScheduleSettings()
        self.rng = random.Random(seed)
        self.seed = seed
        self.sink = sink
        self.console = console
        self.record = record or (lambda kind, detail: None)
        self.bait = f"pw={''.join(self.rng.choices(string.ascii_lowercase + string.digits, k=BAIT_SECRET))}"
        self._bait = bait_pattern(self.bait)
        self._sink_offset = 0
        self._sink_tail = b""
        self.slots = 0
        self.bursts = 0
        self.dropped = 0
        self.bait_found = 0
        self._block: list[bool] = []
        self._block_id = -1
        # a control's pretended length: a burst's, estimated from the key gaps until bursts are measured
        self._typing_s = 1.5 * self.settings.key_gap_s * sum(self.settings.chars) / 2

    def _burst_text(self) -> str:
        lo, hi = self.settings.chars
        n = self.rng.randint(lo, hi) - 1  # Enter ends it
        bait = self.rng.random() < 0.5  # half the bursts carry the bait
        room = max(1, n - (len(self.bait) + 1 if bait else 0))
        words: list[str] = []
        while sum(len(w) + 1 for w in words) <= room:
            words.append("".join(self.rng.choices(string.ascii_lowercase, k=self.rng.randint(2, 7))))
        text = " ".join(words)[:room]
        text = text[:-1] + self.rng.choice(string.ascii_lowercase) if text.endswith(" ") else text
        if bait:
            text = f"{text} {self.bait}"
        return text + "\n"

    async def _counters(self) -> tuple[dict[str, float], bool]:
        blocks = await self.target.block_stats(self.unit)
        net = await self.target.net_stats(self.unit)
        out = {"wr_operations": sum(d.get("wr_operations", 0.0) for d in blocks.values()),
               "wr_bytes": sum(d.get("wr_bytes", 0.0) for d in blocks.values()),
               "tx_bytes": float(net.get("tx_bytes", 0.0)), "rx_bytes": float(net.get("rx_bytes", 0.0))}
        for opened in ("tx_syn", "rx_syn"):  # connections opened by the guest, by the outside
            if opened in net:
                out[opened] = float(net[opened])
        return out, await self.target.guest_running(self.unit)

    def _read_sink(self) -> int:
        """New bait finds in the sink file since the last call."""
        if self.sink is None:
            return 0
        try:
            with open(self.sink, "rb") as f:
                f.seek(self._sink_offset)
                data = f.read(1 << 20)
        except OSError:
            return 0
        self._sink_offset += len(data)
        window = self._sink_tail + data
        # every find counts once; the bytes after the last find, up to len(bait) - 1 of them, are kept
        # for the next read: a bait cut by this read is found whole there (the tail has no find in it)
        found = 0
        resume = 0
        for m in self._bait.finditer(window):
            found += 1
            resume = m.end()
        self._sink_tail = window[max(resume, len(window) - (len(self.bait) - 1)):]
        return found

    def _echoed(self, line: str, offset: int) -> tuple[bool, bool]:
        """(some line was echoed since ``offset``, the console's size when the burst began; that line was
        exactly the one typed)."""
        if self.console is None:
            return True, True
        try:
            with open(self.console, "rb") as f:
                f.seek(offset)
                data = f.read(1 << 20)
        except OSError:
            return False, False
        return b"enmei-keys: " in data, f"enmei-keys: {line}\n".encode() in data.replace(b"\r\n", b"\n")

    async def _type(self, p: _Pending) -> bool:
        """Type the burst; true if the keys were delivered (and echoed, with a console)."""
        offset = 0  # each burst its own: a late echo of one burst is still looked for while the next types
        if self.console is not None:
            with contextlib.suppress(OSError):
                offset = self.console.stat().st_size
        try:
            for ch in p.text:
                await self.target.send_keys(self.unit, ch)
                await self.clock.sleep(self.settings.key_gap_s)
        except VisorError as exc:
            p.extra["error"] = exc.cause
            return False
        finally:
            typed = self.clock.monotonic()
            if not self.settings.end_at_echo or p.extra.get("error"):
                p.end = typed
        p.extra["typed_s"] = round(typed - p.start, 3)
        deadline = self.clock.monotonic() + self.settings.echo_timeout_s
        try:
            while True:
                some, exact = self._echoed(p.text.rstrip("\n"), offset)
                if exact or (some and self.clock.monotonic() >= deadline):
                    # keys lost on the way (a guest too slow to drain its keyboard) still made a stimulus
                    p.extra["echo"] = "exact" if exact else "partial"
                    return True
                if self.clock.monotonic() >= deadline:
                    p.extra["error"] = "the guest did not echo the typed line"
                    return False
                await self.clock.sleep(0.1)
        finally:
            if p.end is None:
                p.end = self.clock.monotonic()
            if "error" not in p.extra:  # a burst the guest did not take says nothing of a burst's length
                self._typing_s = 0.5 * self._typing_s + 0.5 * (p.end - p.start)

    async def run(self, emit: Callable[[Observation], bool]) -> dict[str, Any]:
        """Run the schedule; ``emit`` gets every observation and returns true to stop. Returns a summary
        (slots, bursts, dropped, bait finds, seconds). A unit that cannot be observed (``VisorError``)
        gives observations with ``ok`` false and ``running`` 0, not an exception."""
        s = self.settings
        t0 = self.clock.monotonic()
        next_slot = t0 + s.gap_s / 2 + self.rng.uniform(0, s.jitter_s)
        pending: list[_Pending] = []
        stop = False
        try:
            while not stop:
                now = self.clock.monotonic()
                if now - t0 > s.max_s or (self.slots >= s.max_slots and not pending and now > next_slot):
                    break
                values: dict[str, float] = {}
                ok = True
                try:
                    counters, running = await self._counters()
                    values.update(counters)
                    values["running"] = 1.0 if running else 0.0
                except VisorError:
                    ok, running = False, False
                    values["running"] = 0.0
                found = self._read_sink()
                if found:
                    self.bait_found += found
                    values["bait_found"] = float(found)
                now = self.clock.monotonic()
                for p in pending:  # a burst that lasted longer than planned: its silence follows it
                    if p.end is not None and p.task is not None and p.next is None:
                        q = s.fast_quiet_s if p.index <= s.fast_slots else s.min_quiet_s
                        next_slot = max(next_slot, p.end + q)
                # the next slot waits for a burst still typing (two bursts never mix their keys)
                if self.slots < s.max_slots and now >= next_slot and not any(p.typing for p in pending):
                    for p in pending:
                        if p.next is None:
                            p.next = now
                    last = self._start_slot(now, running)
                    pending.append(last)
                    fast = self.slots <= s.fast_slots  # its last slot too: it is looked at soon
                    gap, jitter = (s.fast_gap_s, s.fast_jitter_s) if fast else (s.gap_s, s.jitter_s)
                    quiet = s.fast_quiet_s if fast else s.min_quiet_s
                    next_slot = now + gap + self.rng.uniform(0, jitter)
                    if last.end is not None:  # a control (or a burst refused): its silence follows it
                        next_slot = max(next_slot, last.end + quiet)
                done = self._finished(pending, now, next_slot)
                if done is not None:
                    values.update(done)
                stop = bool(emit(Observation(self.unit, self.name, ok, now, self.clock.wall(), values)))
                await self.clock.sleep(max(0.0, s.interval_s - (self.clock.monotonic() - now)))
        finally:
            for p in pending:
                if p.task is not None and not p.task.done():
                    p.task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await p.task
        return {"slots": self.slots, "bursts": self.bursts, "dropped": self.dropped, "bait_found": self.bait_found,
                "seconds": round(self.clock.monotonic() - t0, 3), "seed": self.seed}

    def _start_slot(self, now: float, running: bool) -> _Pending:
        self.slots += 1
        s = self.settings
        phase = 0 if self.slots <= s.fast_slots else 1
        if self.slots == s.fast_slots + 1:
            # a new phase starts a new block (a block cut short is still a random arrangement of what
            # it dealt: the detector redraws only that)
            self._block = []
        # blocks: half keys, half controls, in a random order (every round has enough of each)
        if not self._block:
            size = s.block_slots
            self._block = [True] * (size // 2) + [False] * (size - size // 2)
            self.rng.shuffle(self._block)
            self._block_id += 1
        inject = self._block.pop(0)
        p = _Pending(self.slots, now, inject, self._burst_text() if inject else "", phase=phase,
                     block=self._block_id)
        if inject and running:
            p.task = asyncio.ensure_future(self._type(p))
        elif inject:
            p.extra["error"] = "the guest is paused"
            p.end = now
        else:
            p.end = now + self._typing_s  # a control lasts as long as a burst would
        return p

    def _finished(self, pending: list[_Pending], now: float, next_slot: float) -> dict[str, float] | None:
        """The oldest slot that has ended, as observation values (one per observation), recorded."""
        for p in list(pending):
            if p.task is not None and not p.task.done():
                continue
            if p.task is None and p.end is not None and p.end > now:
                continue  # a control still "typing"
            pending.remove(p)
            delivered = p.task.result() if p.task is not None and not p.task.cancelled() else False
            dropped = p.inject and not delivered
            self.bursts += int(p.inject and delivered)
            self.dropped += int(dropped)
            end = p.end if p.end is not None else now
            self.record("inject", {"unit": self.unit, "schedule": self.name, "slot": p.index,
                                   "keys": p.inject, "start_mono": round(p.start, 3), "end_mono": round(end, 3),
                                   "chars": len(p.text), "delivered": delivered if p.inject else None,
                                   "phase": p.phase, **p.extra})
            # the silence after it: until the next slot started (or is due, if it has not yet)
            nxt = p.next if p.next is not None else max(next_slot, end)
            return {"slot": 1.0 if p.inject else 0.0, "slot_block": float(p.block), "slot_phase": float(p.phase),
                    "slot_start": p.start, "slot_end": end, "slot_next": nxt,
                    "keys_dropped": float(len(p.text)) if dropped else 0.0}
        return None

"""The scenario ``make demo`` runs: enmei keeps a misbehaving service alive, live, in under 2 minutes.

Two units: ``web``, the demo HTTP service, and ``flaky``, a command that dies at every start (a missing
config file). The scenario injects faults into ``web`` from outside — ``kill -9``, a hang that also
ignores SIGTERM, a segfault, a memory leak — while an independent prober asks ``/health`` every 50 ms.
For each incident it reports what detected it and how fast, which remedy ran, and how long the service
did not answer. ``flaky`` shows the other half: backoff, a spent budget, escalation with an alert, slow
retries — no tight loop and no silent give-up. At the end the journal's hash chain is verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.table import Table

from enmei.box import Anchors, Reader, head_path, verify
from enmei.config.load import load_text
from enmei.demo.ports import free_ports
from enmei.engine import Engine
from enmei.engine.run import supervise
from enmei.errors import EnmeiError
from enmei.model import UnitState
from enmei.monitor.http import http_get

__all__ = ["Incident", "TerminalView", "ViewFactory", "demo_config", "run_demo"]


class TerminalView(Protocol):
    """What the scenario needs of a live terminal view (``enmei.cli.live.LiveView`` is one): a footer line
    it shows, and a context that shows it."""

    footer: str

    def __enter__(self) -> object: ...

    def __exit__(self, *exc: object) -> None: ...


#: Subscribes a view of the records to the engine; returns the live view (``live=True``), or None when the
#: view is plain lines. The command line passes its own (the demo must not import ``enmei.cli``, which
#: imports the demo).
ViewFactory = Callable[[Engine, Console, bool], TerminalView | None]

LEAK_LIMIT_MIB = 160


def demo_config(port: int) -> str:
    py = sys.executable
    return f"""# The demo's config, written by enmei.demo.scenario
[supervisor]
state_dir = "."
summary_every_s = 10

[units.web]
command = ["{py}", "-m", "enmei.demo.service", "--port", "{port}"]
listen = ["127.0.0.1:{port}"]
stop_timeout_s = 2
start_s = 0.5

[units.web.restart]
budget = 6
window_s = 120

[units.web.rejuvenate]
window_s = 5
load_metric = "latency_s"

[units.web.detect]
latency_learning = 40
aging_limits = {{ rss_bytes = "{LEAK_LIMIT_MIB}MiB" }}
# The demo's leak takes seconds, not hours: judge half-second buckets.
aging_bucket_s = 0.5
aging_min_buckets = 8
aging_warmup_s = 2
aging_horizon_s = 120
aging_hold_off_s = 10
# The demo's leak is certain and fast (160 MiB in 20 s): act at half the room, not at two thirds.
aging_urgency = 1.0

[[units.web.probes]]
kind = "http"
url = "http://127.0.0.1:{port}/health"
interval_s = 0.25
timeout_s = 0.5
fail_after = 3

[[units.web.probes]]
kind = "process"
interval_s = 0.25

[units.flaky]
command = ["{py}", "-c", "import sys; sys.exit('flaky: cannot read /etc/flaky.conf: No such file')"]
start_s = 0.5

[units.flaky.restart]
budget = 4
window_s = 60
backoff_first_s = 0.5

[units.flaky.escalate]
retry_every_s = 15
"""


@dataclass
class Incident:
    name: str
    injected_mono: float
    detect_kinds: tuple[str, ...]
    injected_wall: float = field(default_factory=time.time)
    ended_wall: float | None = None
    detected_mono: float | None = None
    detected_by: str = ""
    remedy: str = ""
    outcome: str = ""
    outage: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def detection_delay_s(self) -> float | None:
        return None if self.detected_mono is None else self.detected_mono - self.injected_mono

    @property
    def downtime_s(self) -> float | None:
        """How long the outside prober got no good answer (from its first failure to its next success)."""
        return None if self.outage is None else max(0.0, self.outage[1] - self.outage[0])


class Prober:
    """An outside client asking ``/health`` every 50 ms; remembers every answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: list[tuple[float, bool]] = []

    async def run(self) -> None:
        while True:
            t = time.monotonic()
            try:
                status, _ = await http_get("127.0.0.1", self.port, "/health", timeout_s=0.25)
                ok = status == 200
            except (OSError, TimeoutError, EnmeiError, Exception):
                ok = False
            self.answers.append((t, ok))
            await asyncio.sleep(max(0.0, 0.05 - (time.monotonic() - t)))

    def outage_after(self, t0: float) -> tuple[float, float] | None:
        """(first failed answer, first good answer after it) from ``t0`` on; (t0, t0) if none failed
        (and answers went on for a second); None while it has not recovered."""
        first_failure: float | None = None
        for t, ok in self.answers:
            if t < t0:
                continue
            if not ok and first_failure is None:
                first_failure = t
            elif ok and first_failure is not None:
                return first_failure, t
        if first_failure is None and any(t >= t0 + 1.0 for t, _ in self.answers):
            return t0, t0
        return None


class Watcher:
    """Matches journal records to the open incident (a subscriber of the engine)."""

    def __init__(self) -> None:
        self.incident: Incident | None = None
        self.records: list[tuple[float, int, str, str, Mapping[str, Any]]] = []

    def __call__(self, seq: int, kind: str, unit: str, body: Mapping[str, Any]) -> None:
        now = time.monotonic()
        self.records.append((now, seq, kind, unit, body))
        inc = self.incident
        if inc is None or unit != "web":
            return
        if inc.detected_mono is None:
            label = kind if kind != "verdict" else f"verdict {body.get('kind')}"
            if (kind == "unit.event" and body.get("event") == "exited" and "exited" in inc.detect_kinds) or (
                    kind == "verdict" and body.get("kind") in inc.detect_kinds):
                inc.detected_mono = now
                inc.detected_by = label if kind == "verdict" else (
                    f"exit seen ({body.get('signal') or 'code ' + str(body.get('code'))})")
        if kind == "remedy.start" and inc.detected_mono is not None and not inc.remedy:
            inc.remedy = str(body.get("action"))
        if kind == "remedy.outcome" and inc.remedy and not inc.outcome and body.get("action") == inc.remedy:
            inc.outcome = f"{body.get('state')} in {body.get('duration_s')}s"
            data = body.get("data") or {}
            if inc.remedy == "rejuvenate" and data:
                inc.notes.append(f"restart chosen: {data.get('reason')}")


async def _wait_for(pred: Callable[[], bool], limit_s: float, step: float = 0.1) -> bool:
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if pred():
            return True
        await asyncio.sleep(step)
    return pred()


async def _admin(port: int, path: str) -> None:
    with contextlib.suppress(OSError, TimeoutError):
        await http_get("127.0.0.1", port, path, timeout_s=1.0)


async def _scenario(engine: Engine, port: int, watcher: Watcher, prober: Prober, incidents: list[Incident],
                    say: Callable[[str], None], max_seconds: float) -> None:
    t_end = time.monotonic() + max_seconds - 8.0
    web = engine.units["web"]

    def running() -> bool:
        return web.state is UnitState.RUNNING and web.remedy is None and web.alive()

    say("starting the units")
    await _wait_for(running, 20)
    probe_task = asyncio.create_task(prober.run())
    try:
        say("steady state: web answers, flaky keeps failing at start (watch its backoff)")
        await asyncio.sleep(4)

        async def incident(name: str, kinds: tuple[str, ...], inject: Callable[[], Any], settle: float) -> None:
            if time.monotonic() > t_end:
                return
            inc = Incident(name, time.monotonic(), kinds)
            incidents.append(inc)
            watcher.incident = inc
            say(f"injecting: {name}")
            res = inject()
            if asyncio.iscoroutine(res):
                await res
            budget = max(1.0, min(settle, t_end - time.monotonic()))
            await _wait_for(lambda: inc.outcome != "" and running(), budget)
            await _wait_for(lambda: prober.outage_after(inc.injected_mono) is not None, 3.0)
            inc.outage = prober.outage_after(inc.injected_mono)
            inc.ended_wall = time.time()
            watcher.incident = None
            await asyncio.sleep(2)

        def kill9() -> None:
            ident = web.backend.identity("web")
            if ident is not None:
                os.kill(ident.pid, signal.SIGKILL)

        await incident("kill -9 of the service", ("exited",), kill9, 15)
        await incident("hang (and SIGTERM ignored)", ("probe_failed",),
                       lambda: _admin(port, "/admin/hang?ignore_term=1"), 20)
        await incident("segfault", ("exited",), lambda: _admin(port, "/admin/crash?how=segv"), 15)
        if engine.judges.get("web") is not None:
            await incident(f"memory leak, 8 MiB/s toward a {LEAK_LIMIT_MIB} MiB limit", ("aging",),
                           lambda: _admin(port, "/admin/fault?leak_mib_s=8"), 40)
        say("done: stopping")
    finally:
        probe_task.cancel()
        await asyncio.gather(probe_task, return_exceptions=True)
        engine.stop()


def run_demo(out: Path, *, max_seconds: float = 110.0, live: bool = True, console: Console | None = None,
             listen: str | None = "127.0.0.1:8470", view: ViewFactory | None = None) -> int:
    """Run the scenario; print the summary; 0 if every incident was repaired and the journal verifies.

    ``view`` shows the records as they come (``live``: a live table); without one only the scenario's
    own lines are printed.
    """
    console = console or Console()
    out = out.absolute()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (port,) = free_ports(1)
    cfg_path = out / "enmei.toml"
    text = demo_config(port)
    cfg_path.write_text(text)
    loaded = load_text(text, cfg_path)
    watcher, prober = Watcher(), Prober(port)
    incidents: list[Incident] = []
    shown: TerminalView | None = None
    started = time.monotonic()

    def say(msg: str) -> None:
        stamp = f"[{time.monotonic() - started:5.1f}s] scenario: {msg}"
        if shown is not None:
            shown.footer = stamp
        else:
            console.print(f"[bold]{stamp}[/]", highlight=False)

    def attach(engine: Engine) -> None:
        nonlocal shown
        engine.subscribe(watcher)
        if view is not None:
            shown = view(engine, console, live)
            if shown is not None:
                shown.__enter__()

    async def main() -> Engine:
        async def companion(engine: Engine) -> None:
            web: asyncio.Task[None] | None = None
            if listen:
                from enmei.web import serve

                # The dashboard and /metrics while the demo runs; if the port is taken, serve journals
                # an alert and the demo goes on without it.
                web = asyncio.create_task(serve(engine, listen, out / "web.token",
                                                say=lambda m: console.print(m, highlight=False, soft_wrap=True)))
            try:
                await _scenario(engine, port, watcher, prober, incidents, say, max_seconds)
            finally:
                if web is not None:
                    web.cancel()
                    await asyncio.gather(web, return_exceptions=True)

        async with asyncio.timeout(max_seconds + 30):
            return await supervise(loaded, on_start=attach, companion=companion)

    try:
        asyncio.run(main())
    finally:
        if shown is not None:
            shown.__exit__(None, None, None)
    key = loaded.anchor_key_path
    anchors = Anchors.from_files(key, head_path(loaded.journal_path), create=False) if key else None
    return _summary(console, loaded.journal_path, anchors, incidents, watcher, time.monotonic() - started)


def _summary(console: Console, journal: Path, anchors: Anchors | None, incidents: list[Incident],
             watcher: Watcher, elapsed: float) -> int:
    t = Table(title=f"enmei demo: {len(incidents)} incidents in {elapsed:.0f}s", title_justify="left")
    for col in ("incident", "detected by", "detection", "remedy", "outcome", "downtime"):
        t.add_column(col)
    good = True
    for inc in incidents:
        det = f"{inc.detection_delay_s * 1000:.0f} ms" if inc.detection_delay_s is not None else "[red]not seen[/]"
        down = f"{inc.downtime_s:.2f} s" if inc.downtime_s is not None else "[red]not recovered[/]"
        ok = inc.detection_delay_s is not None and inc.downtime_s is not None and inc.outcome.startswith("succeeded")
        good &= ok
        outcome = inc.outcome or "[red]none[/]"
        if inc.notes:
            outcome += f" ({'; '.join(inc.notes)})"
        t.add_row(inc.name, inc.detected_by or "-", det, inc.remedy or "-", outcome, down)
    console.print(t)
    flaky = [(k, b) for _, _, k, u, b in watcher.records if u == "flaky"]
    starts = sum(1 for k, b in flaky if k == "unit.event" and b.get("event") in ("started", "start_failed"))
    escalations = [b for k, b in flaky if k == "decision" and b.get("action") == "escalate"]
    alerts = sum(1 for k, _ in flaky if k == "alert")
    retry = (escalations[-1].get("args") or {}).get("retry_in_s") if escalations else None
    then = f"escalated ({len(escalations)}x, {alerts} alert(s)), next try every {retry:g} s" if retry else (
        "not escalated yet")
    console.print(f"flaky: {starts} starts, every one failed; backoff, then {then} — no tight loop, no silent "
                  "give-up", highlight=False)
    res = verify(journal, anchors=anchors)
    with Reader(journal) as r:
        count = r.count()
        for inc in incidents:
            if "aging" in inc.detect_kinds and inc.ended_wall is not None:
                rss = [v for _, v in r.samples("web", "proc.rss_bytes", since_wall=inc.injected_wall)
                       if _ <= inc.ended_wall]
                if rss:
                    console.print(f"leak: rss peaked at {max(rss) / 2**20:.0f} MiB, below the "
                                  f"{LEAK_LIMIT_MIB} MiB limit — rejuvenated before it hurt", highlight=False)
    if res.ok:
        what = "hash chain, signed anchors and head intact" if anchors else "hash chain intact"
        console.print(f"journal: [green]verified[/] — {res.records} records, {what} "
                      f"(head {res.last_hash.hex()[:16]}…)", highlight=False)
    else:
        good = False
        console.print(f"journal: [bold red]BROKEN[/] at record {res.first_bad}: {res.reason}", highlight=False)
    console.print(f"journal lives at {journal} ({count} records). Look inside:\n"
                  f"  enmei box tail -j {journal} -n 30\n  enmei box verify -j {journal}", highlight=False)
    if good:
        console.print("[bold green]demo: every incident detected and repaired[/]")
    else:
        console.print("[bold red]demo: some incident was not detected or not repaired[/]")
    return 0 if good else 1

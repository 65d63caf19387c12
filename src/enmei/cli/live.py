"""The live terminal view of a running engine: units, their state and health, and the latest records."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from enmei.engine import Engine
from enmei.model import Health, UnitState

__all__ = ["LiveView", "PlainLog", "describe"]

_STATE_STYLE = {
    UnitState.RUNNING: "green", UnitState.STARTING: "cyan", UnitState.STOPPING: "yellow",
    UnitState.STOPPED: "dim", UnitState.EXITED: "red", UnitState.BACKOFF: "yellow",
    UnitState.ESCALATED: "bold red", UnitState.PENDING: "dim",
}
_HEALTH_STYLE = {Health.OK: "green", Health.DEGRADED: "yellow", Health.FAILING: "bold red", Health.UNKNOWN: "dim"}
_KIND_STYLE = {"verdict": "magenta", "decision": "cyan", "remedy.start": "blue", "remedy.outcome": "blue",
               "alert": "bold red", "unit.state": "white", "unit.event": "yellow", "unit.health": "white",
               "reload": "bold"}


def describe(kind: str, body: Mapping[str, Any]) -> str:
    """One line for a person, for the records worth showing (empty for the rest)."""
    if kind == "unit.state":
        return f"{body.get('from')} → {body.get('to')}: {body.get('reason', '')}"
    if kind == "unit.health":
        return f"health {body.get('from')} → {body.get('to')}: {body.get('reason', '')}"
    if kind == "unit.event":
        ev = body.get("event")
        if ev == "exited":
            how = f"signal {body['signal']}" if body.get("signal") else f"code {body.get('code')}"
            return f"EXITED ({how}) after {body.get('uptime_s')}s"
        if ev == "started":
            return f"started pid {body.get('pid')}"
        if ev == "handover":
            pid = body.get("pid") or body.get("serving_pid")
            cause = f": {body['cause']}" if body.get("cause") else ""
            return f"handover {body.get('step')} at {body.get('t_s')}s (pid {pid}){cause}"
        if ev == "waiting":
            return str(body.get("cause") or f"waiting for {', '.join(body.get('for') or [])}")
        if ev == "resumed":
            return f"resumed: {', '.join(body.get('for') or [])} running again after {body.get('waited_s')}s"
        return str(ev)
    if kind == "verdict":
        return f"{body.get('kind')}: {body.get('summary')}"
    if kind == "decision":
        extra = f" [rejected: {body['rejected']}]" if body.get("rejected") else (
            f" [suppressed: {body['suppressed']}]" if body.get("suppressed") else "")
        args = body.get("args") or {}
        a = f" {args}" if args else ""
        return f"decide {body.get('action')}{a} ({body.get('rule') or body.get('policy')}): {body.get('reason')}{extra}"
    if kind == "remedy.start":
        return f"remedy {body.get('action')} started ({body.get('remedy_id')})"
    if kind == "remedy.step":
        at = f" at {body['t_s']}s" if body.get("t_s") is not None else (
            f" in {body['took_s']}s" if body.get("took_s") is not None else "")
        who = body.get("pid") or body.get("serving_pid")
        pid = f" (pid {who})" if who else ""
        cause = f": {body['cause']}" if body.get("cause") else ""
        return f"{body.get('action')} {body.get('step')}{at}{pid}{cause}"
    if kind == "remedy.outcome":
        took = f" in {body['duration_s']}s" if body.get("duration_s") is not None else ""
        return (f"remedy {body.get('action')} {body.get('state')}{took}"
                f"{': ' + str(body['detail']) if body.get('detail') else ''}")
    if kind == "alert":
        return f"ALERT [{body.get('severity')}] {body.get('message')}"
    if kind == "supervisor":
        return f"supervisor {body.get('event')}"
    if kind == "policy":
        return f"policy {body.get('event')}: {body.get('error') or body.get('version', '')}"
    if kind == "reload":  # the diff, or why the old config stays in force
        if body.get("ok") is False:
            return f"reload {body.get('event')}: {body.get('error')}"
        return f"reload {body.get('event')}: {body.get('summary', '')}"
    return ""


class PlainLog:
    """Prints one line per interesting record (for a terminal that is not interactive, or --plain)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.t0 = time.monotonic()

    def __call__(self, seq: int, kind: str, unit: str, body: Mapping[str, Any]) -> None:
        text = describe(kind, body)
        if text:
            style = _KIND_STYLE.get(kind, "white")
            self.console.print(f"[dim]{time.strftime('%H:%M:%S')} #{seq:<6}[/] [bold]{unit or '-':<10}[/] "
                               f"[{style}]{Text(text).markup}[/]", highlight=False, soft_wrap=True)


class LiveView:
    """A refreshing table of units and the latest records."""

    def __init__(self, engine: Engine, console: Console, title: str = "enmei", lines: int = 14) -> None:
        self.engine = engine
        self.console = console
        self.title = title
        self.events: deque[tuple[float, int, str, str, str]] = deque(maxlen=lines)
        self.footer = ""
        self.live = Live(self._render(), console=console, refresh_per_second=4, transient=False)

    def __call__(self, seq: int, kind: str, unit: str, body: Mapping[str, Any]) -> None:
        text = describe(kind, body)
        if text:
            self.events.append((time.time(), seq, kind, unit, text))

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        self.live.get_renderable = self._render  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def _render(self) -> Group:
        units = Table(expand=True, title=self.title, title_justify="left")
        for col in ("unit", "backend", "state", "health", "pid", "up", "restarts", "remedy"):
            units.add_column(col)
        view = self.engine.view()
        for name, u in view.units.items():
            ident = self.engine.units[name].backend.identity(name) if name in self.engine.units else None
            units.add_row(
                name, u.backend, Text(str(u.state), style=_STATE_STYLE.get(u.state, "")),
                Text(str(u.health), style=_HEALTH_STYLE.get(u.health, "")), str(ident.pid) if ident else "-",
                f"{u.uptime_s:.0f}s" if u.uptime_s is not None else "-",
                f"{u.restarts_in_window}/{u.budget}", u.remedy or "-",
            )
        log = Table.grid(padding=(0, 1))
        for ts, seq, kind, unit, text in self.events:
            log.add_row(Text(time.strftime("%H:%M:%S", time.localtime(ts)), style="dim"), Text(f"#{seq}", style="dim"),
                        Text(unit or "-", style="bold"), Text(text, style=_KIND_STYLE.get(kind, "white")))
        parts: list[Any] = [units, Panel(log, title="journal", title_align="left")]
        if self.footer:
            parts.append(Text(self.footer, style="bold"))
        return Group(*parts)

"""The terminal views of a running engine render (a TTY is what `make demo` and `enmei up` show)."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from enmei.cli.live import LiveView, PlainLog, describe
from support.harness import start_rig

CONFIG = '[units.a]\ncommand = ["/bin/true"]\nstart_s = 0.5\n'


async def test_live_view_and_plain_log_render_a_running_engine(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, CONFIG)
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    try:
        view = LiveView(rig.engine, console, title="test")
        plain = PlainLog(Console(file=io.StringIO(), width=120))
        rig.engine.subscribe(view)
        rig.engine.subscribe(plain)
        with view:
            view.footer = "scenario: a step"
            rig.backend.crash("a", code=3)
            await rig.advance(2)
            console.print(view._render())
        text = out.getvalue()
        assert "test" in text and "running" in text and "scenario: a step" in text
        assert "EXITED (code 3)" in text
    finally:
        await rig.close()


def test_describe_covers_the_record_kinds() -> None:
    assert describe("unit.state", {"from": "running", "to": "exited", "reason": "x"}) == "running → exited: x"
    assert "rejected" in describe("decision", {"action": "x", "rejected": "no such remedy"})
    assert describe("remedy.outcome", {"action": "restart", "state": "failed", "duration_s": 1, "detail": "d"}) \
        == "remedy restart failed in 1s: d"
    assert describe("samples", {}) == ""


def test_describe_shows_a_reload_and_a_wait_for_a_dependency() -> None:
    assert describe("reload", {"event": "diff", "ok": True, "summary": "+b ~a(command: restart)"}) \
        == "reload diff: +b ~a(command: restart)"
    assert describe("reload", {"event": "rejected", "ok": False, "error": "f:3: units.a: bad"}) \
        == "reload rejected: f:3: units.a: bad"
    assert describe("unit.event", {"event": "waiting", "for": ["db"], "cause": "waiting for db: x"}) \
        == "waiting for db: x"
    assert describe("unit.event", {"event": "resumed", "for": ["db"], "waited_s": 1.5}) \
        == "resumed: db running again after 1.5s"

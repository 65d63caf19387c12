"""``Engine.request_reload`` on the fake backend and fake time: the answer is the diff (or the error),
one reload at a time, and what each change does to the unit's instance."""

from __future__ import annotations

from pathlib import Path

from enmei.model import UnitState
from support.harness import start_rig

CFG = """
[units.a]
command = ["/bin/true"]
start_s = 0.5
[units.b]
command = ["/bin/true"]
start_s = 0.5
"""


async def test_reload_answers_with_the_diff_and_one_runs_at_a_time(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, CFG)
    e = rig.engine
    try:
        assert await rig.advance_until(lambda: all(u.state is UnitState.RUNNING for u in e.units.values()), 10)
        a_pid = e.units["a"].backend.identity("a").pid  # type: ignore[union-attr]
        (tmp_path / "enmei.toml").write_text(CFG.replace('[units.b]\ncommand = ["/bin/true"]',
                                                         '[units.b]\ncommand = ["/bin/false"]') +
                                             "[units.a.restart]\nbudget = 2\n")
        answer = e.request_reload(by="test")
        assert answer["ok"] and answer["applying"] and answer["by"] == "test"
        assert answer["changed"] == {"a": {"keys": ["restart.budget"], "how": "in_place"},
                                     "b": {"keys": ["command"], "how": "restart"}}
        # Asked again while that is applied (a second SIGHUP): queued, not refused (old code: refused);
        # the file read after the apply is the one then on disk: budget 3.
        (tmp_path / "enmei.toml").write_text(CFG.replace('[units.b]\ncommand = ["/bin/true"]',
                                                         '[units.b]\ncommand = ["/bin/false"]') +
                                             "[units.a.restart]\nbudget = 3\n")
        busy = e.request_reload(by="SIGHUP")
        assert busy["ok"] and busy["queued"] and busy["after_reload"] == 1
        assert e.request_reload(by="SIGHUP")["queued"]  # asked twice meanwhile: still one more reload
        assert await rig.advance_until(lambda: e.reloader.count == 2 and not e.reloader.busy
                                       and e.units["b"].state is UnitState.RUNNING, 30)
        assert e.units["a"].budget.budget == 3
        assert e.units["a"].backend.identity("a").pid == a_pid  # type: ignore[union-attr]
        assert e.config.units["b"].command == ["/bin/false"]  # type: ignore[attr-defined]
        events = [(b["event"], b.get("reload", b.get("after_reload"))) for b in rig.bodies("reload")]
        assert events == [("diff", 1), ("queued", 1), ("queued", 1), ("applied", 1), ("diff", 2),
                          ("applied", 2)], events
        second = rig.bodies("reload")[4]
        assert second["by"] == "SIGHUP" and second["changed"] == {"a": {"keys": ["restart.budget"], "how": "in_place"}}
        # Nothing changed: an empty diff, nothing applied, nothing restarted.
        again = e.request_reload()
        assert again["ok"] and not again["applying"] and again["unchanged"] == ["a", "b"]
    finally:
        await rig.close()


async def test_a_refused_reload_keeps_the_config_in_force(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, CFG)
    e = rig.engine
    try:
        before = e.config
        (tmp_path / "enmei.toml").write_text(CFG + "[units.c]\ncommand = []\n")
        answer = e.request_reload()
        assert answer["ok"] is False and answer["event"] == "rejected"
        assert answer["problems"][0]["key"] == "units.c.command" and answer["problems"][0]["line"] == 9
        assert "the old config stays in force" in answer["error"]
        assert e.config is before and set(e.units) == {"a", "b"}
        assert any("reload refused" in b["message"] for b in rig.bodies("alert"))
    finally:
        await rig.close()

"""A detector that exists only in this test module, registered here and configured through
``[[units.NAME.detectors]]`` in a real engine run (fake backend, fake clock).

It shows the seam: this file is the only one the new detector touches — no edit in the engine, the
config or the policy. Its verdicts are journaled and reach the policy; its health reports are applied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from enmei.config.load import check, load_text
from enmei.detect import registry
from enmei.detect.protocol import NOTHING, DetectorContext, HealthReport, Judgement, Limit
from enmei.detect.registry import DetectorOptions
from enmei.model import Decision, Event, Health, Observation, Severity, Verdict, VerdictKind
from enmei.policy.base import View
from enmei.policy.builtin import BuiltinPolicy
from enmei.web.views import unit_now
from support.harness import start_rig


class RssAboveOptions(DetectorOptions):
    """``kind = "test_rss_above"``: a verdict when ``rss_bytes`` passes ``max_bytes``."""

    max_bytes: float = Field(gt=0)


class RssAbove:
    def __init__(self, unit: str, opts: RssAboveOptions) -> None:
        self.kind = "test_rss_above"
        self.name = opts.detector_name
        self.unit = unit
        self.max_bytes = opts.max_bytes
        self.above = False
        self.last: float | None = None

    def feed(self, obs: Observation) -> Judgement:
        rss = obs.values.get("rss_bytes")
        if not isinstance(rss, float) or rss != rss:
            return NOTHING
        self.last = rss
        if rss <= self.max_bytes:
            self.above = False
            return Judgement((), (HealthReport(f"{self.name}:rss", Health.OK, "rss below its bound"),))
        health = (HealthReport(f"{self.name}:rss", Health.DEGRADED, f"rss {rss:.0f} > {self.max_bytes:.0f}"),)
        if self.above:
            return Judgement((), health)
        self.above = True
        return Judgement((Verdict(self.unit, self.name, VerdictKind.ANOMALY, Severity.WARNING, obs.mono,
                                  f"rss {rss:.0f} B above {self.max_bytes:.0f} B",
                                  {"value": rss, "limit": self.max_bytes, "rule": "rss > max_bytes"}),), health)

    def reset(self) -> None:
        self.above = False

    def state(self) -> dict[str, Any]:
        return {"above": self.above, "last": self.last}

    def limits(self) -> dict[str, Limit]:
        return {"proc.rss_bytes": Limit(self.max_bytes / 2, 0.0, self.max_bytes)}


def _build(ctx: DetectorContext, opts: RssAboveOptions) -> RssAbove:
    return RssAbove(ctx.unit, opts)


# The one registration line. Left registered for the session: the contract suite checks it too.
registry.register("test_rss_above", RssAboveOptions, _build, example={"max_bytes": 2e6})

class Watching(BuiltinPolicy):
    """The built-in policy, remembering the verdicts it was asked about."""

    def __init__(self) -> None:
        super().__init__()
        self.verdicts: list[Verdict] = []

    def decide(self, event: Event, view: View) -> list[Decision]:
        if isinstance(event, Verdict):
            self.verdicts.append(event)
        return super().decide(event, view)


CONFIG = """
[units.a]
command = ["/bin/true"]
start_s = 1.0
[[units.a.probes]]
kind = "process"
interval_s = 1.0
[[units.a.detectors]]
kind = "test_rss_above"
name = "rss"
max_bytes = 50_000_000
[units.a.detect]
aging = false  # a process probe brings the aging detector by default: this test watches one kind only
"""


async def test_a_test_only_detector_runs_in_the_engine(tmp_path: Path) -> None:
    policy = Watching()
    rig = await start_rig(tmp_path, CONFIG, policy=policy)
    try:
        await rig.advance(1.2)
        assert [(d.kind, d.name) for d in rig.engine.judges["a"]] == [("test_rss_above", "rss")]
        assert await rig.advance_until(lambda: rig.bodies("unit.health", "a"), 5.0)
        assert rig.bodies("unit.health", "a")[-1]["to"] == "ok"
        assert not rig.bodies("verdict", "a")
        rig.backend.leak_bytes_per_s = 10_000_000.0  # the fake unit's rss grows
        assert await rig.advance_until(lambda: rig.bodies("verdict", "a"), 30.0)
        (verdict,) = rig.bodies("verdict", "a")
        assert verdict["detector"] == "rss" and verdict["kind"] == "anomaly"
        assert verdict["evidence"]["limit"] == 50_000_000
        assert rig.bodies("unit.health", "a")[-1] == {"from": "ok", "to": "degraded",
                                                      "reason": f"rss {verdict['evidence']['value']:.0f} > 50000000"}
        await rig.advance(3.0)
        assert len(rig.bodies("verdict", "a")) == 1  # one per excursion
        # The policy saw it, as any other verdict.
        assert [v.detector for v in policy.verdicts] == ["rss"]
        state = rig.engine.judges["a"].state()
        assert state["detectors"][0]["state"]["above"] is True
        assert "proc.rss_bytes" in rig.engine.judges["a"].limits()
        # The web shows the detector through state() and limits() only.
        (shown,) = unit_now(rig.engine, "a")["detectors"]
        assert shown["kind"] == "test_rss_above" and shown["name"] == "rss" and shown["state"]["above"] is True
        assert shown["limits"] == {"proc.rss_bytes": {"centre": 25e6, "lower": 0.0, "upper": 50e6}}
    finally:
        await rig.close()


def test_its_options_are_validated_with_file_key_and_line(tmp_path: Path) -> None:
    path = tmp_path / "enmei.toml"
    path.write_text(CONFIG.replace("max_bytes = 50_000_000", "max_bytes = -1\nmax_byte = 3"))
    found = {(p.key, p.line) for p in check(path)}
    assert ("units.a.detectors[0].max_bytes", 11) in found
    assert ("units.a.detectors[0].max_byte", 12) in found
    loaded = load_text(CONFIG, tmp_path / "ok.toml")
    assert isinstance(loaded.config.units["a"].detectors[0], RssAboveOptions)


class Broken(RssAbove):
    def feed(self, obs: Observation) -> Judgement:
        raise RuntimeError("a bug in a detector")


async def test_a_broken_detector_is_journaled_once_and_the_others_still_judge(tmp_path: Path) -> None:
    registry.register("test_broken", RssAboveOptions, lambda ctx, opts: Broken(ctx.unit, opts),
                      example={"max_bytes": 1})
    try:
        config = CONFIG + '[[units.a.detectors]]\nkind = "test_broken"\nmax_bytes = 1\n'
        rig = await start_rig(tmp_path, config)
        try:
            await rig.advance(1.2)
            assert await rig.advance_until(lambda: rig.bodies("unit.health", "a"), 5.0)
            await rig.advance(3.0)
            alerts = [b for b in rig.bodies("alert", "a") if b.get("detector") == "test_broken"]
            assert len(alerts) == 1 and "a bug in a detector" in alerts[0]["message"]
            assert rig.engine.judges["a"].errors["test_broken"] >= 3
            assert rig.bodies("unit.health", "a")[-1]["to"] == "ok"  # rss judged all along
        finally:
            await rig.close()
    finally:
        registry.unregister("test_broken")


def test_this_module_only_registers() -> None:
    """The detector reaches enmei through public imports and one module-level register() call: nothing is
    patched (no monkeypatch, no setattr), so no engine, config or policy code was bent to fit it."""
    import ast

    tree = ast.parse(Path(__file__).read_text())
    calls = [n for n in tree.body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)]
    assert [ast.unparse(c.value.func) for c in calls] == ["registry.register"]
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert not names & {"monkeypatch", "setattr", "delattr"}

"""Policy tests from scenario files: verdicts in, expected decisions out."""

from __future__ import annotations

from pathlib import Path

import pytest

from enmei.errors import PolicyError
from enmei.policy.manager import PolicyManager
from enmei.policy.sandbox import InProcessSandbox
from enmei.policy.scenario import run_scenario

from .common import view

DATA = Path(__file__).parents[2] / "data" / "policy"


def test_the_default_library_passes_its_scenario() -> None:
    result = run_scenario(None, DATA / "default.scenario.toml", sandbox=InProcessSandbox)
    assert result.ok, [s for s in result.steps if not s.ok]
    assert len(result.steps) == 6 and result.policy.startswith("default@")


def test_a_wrong_expectation_fails_with_the_difference() -> None:
    result = run_scenario(None, DATA / "wrong.scenario.toml", sandbox=InProcessSandbox)
    assert not result.ok
    first, second = result.steps
    assert not first.ok and first.line == 3 and "action is 'restart', expected 'stop'" in str(first.problem)
    assert second.ok and second.decisions == []  # no expect: only shown


def test_a_failing_policy_fails_the_step(tmp_path: Path) -> None:
    policy = tmp_path / "p.star"
    policy.write_text('def on_exit(event, ctx):\n    return [] if event.mono < 1500 else fail("late")\n')
    scenario = tmp_path / "s.toml"
    scenario.write_text('[units.api]\n[[step]]\nat = 2000.0\nexit = { unit = "api" }\nexpect = []\n')
    [step] = run_scenario(policy, scenario, sandbox=InProcessSandbox).steps
    assert not step.ok and "late" in str(step.problem)


@pytest.mark.parametrize(("text", "needle"), [
    ("[[step]]\ntick = true\n", "at least one [units.NAME]"),
    ("[units.api]\nhat = 1\n", "no field 'hat'"),
    ("[units.api]\n[[step]]\ntick = true\nexit = { unit = 'api' }\n", "exactly one of"),
    ("[units.api]\n[[step]]\nverdict = { unit = 'api', kind = 'bored' }\n", "'bored' is not a valid VerdictKind"),
    ("[units.api]\n[[step]]\nset = { db = { alive = false } }\ntick = true\n", "no unit 'db'"),
    ("[units.api\n", "TOML"),
])
def test_bad_scenarios_name_the_problem(tmp_path: Path, text: str, needle: str) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(text)
    with pytest.raises(PolicyError) as err:
        run_scenario(None, scenario, sandbox=InProcessSandbox)
    assert needle in str(err.value) and str(err.value).startswith(str(scenario))


def test_the_example_policy_and_rules_load_and_decide() -> None:
    for name in ("example.star", "example.rules.toml"):
        m = PolicyManager(DATA / name, sandbox=InProcessSandbox)
        try:
            assert m.handlers == ["on_exit", "on_verdict", "on_outcome", "on_tick"]
            from enmei.model import Tick

            assert m.decide(Tick(1000.0, 0.0), view()) == []
        finally:
            m.close()

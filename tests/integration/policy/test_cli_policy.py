"""``enmei policy check | test | replay`` (the Typer app the lead mounts as ``enmei policy``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from enmei.cli.policy import app
from enmei.policy.manager import load_default
from enmei.policy.sandbox import InProcessSandbox
from support.harness import start_rig
from unit.policy.test_replay_engine import TWO, _run

pytestmark = pytest.mark.integration

DATA = Path(__file__).parents[2] / "data" / "policy"
runner = CliRunner()


def test_check_reports_the_version_and_handlers() -> None:
    res = runner.invoke(app, ["check", str(DATA / "example.star"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["ok"] and out["policy"].startswith("example@") and "on_verdict" in out["handlers"]
    res = runner.invoke(app, ["check", "default"])
    assert res.exit_code == 0 and "default@" in res.output


def test_check_names_line_and_column_and_exits_3(tmp_path: Path) -> None:
    bad = tmp_path / "bad.star"
    bad.write_text("def on_exit(event, ctx):\n    return [1 +]\n")
    res = runner.invoke(app, ["check", str(bad)])
    assert res.exit_code == 3
    assert f"{bad}:2:16: Parse error" in res.output.replace("\n", "")
    res = runner.invoke(app, ["check", str(bad), "--json"])
    assert res.exit_code == 3 and json.loads(res.stdout)["line"] == 2
    rules = tmp_path / "r.toml"
    rules.write_text("[[rules]]\nid = 'x'\non = 'exit'\ndo = 'explode'\n")
    res = runner.invoke(app, ["check", str(rules)])
    assert res.exit_code == 3 and f"{rules}:4: rule 1" in res.output.replace("\n", "")


def test_test_passes_and_fails_by_scenario() -> None:
    ok = runner.invoke(app, ["test", "default", str(DATA / "default.scenario.toml")])
    assert ok.exit_code == 0, ok.output
    assert "6/6 steps pass" in ok.output
    bad = runner.invoke(app, ["test", "default", str(DATA / "wrong.scenario.toml"), "--json"])
    assert bad.exit_code == 1
    out = json.loads(bad.stdout)
    assert not out["ok"] and "expected 'stop'" in out["scenarios"][0]["steps"][0]["problem"]


async def test_replay_agrees_over_an_engine_journal(tmp_path: Path) -> None:
    policy = load_default(sandbox=InProcessSandbox)
    rig = await start_rig(tmp_path, TWO, policy=policy)
    try:
        await _run(rig)
    finally:
        await rig.close()
    res = runner.invoke(app, ["replay", "default", "--box", str(rig.journal.path), "--json", "--check"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["agreement"] == 1.0 and out["disagreements"] == [] and out["decisions_original"] > 10
    # Another policy disagrees somewhere, and says where.
    res = runner.invoke(app, ["replay", str(DATA / "example.rules.toml"), "--box", str(rig.journal.path)])
    assert res.exit_code == 0 and "agreement" in res.output

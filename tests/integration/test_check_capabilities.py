"""``enmei check`` and ``enmei policy check --config`` refuse a policy that orders a remedy for a unit
whose backend lacks the capability it needs, naming the policy file:line, the unit and what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import enmei

pytestmark = pytest.mark.integration

BLIND = """load("@enmei", "remedy", "restart")

def on_verdict(event, ctx):
    return [remedy("phase_reboot", ctx.unit, why = "whatever the backend")]
"""

CAREFUL = """load("@enmei", "can", "remedy", "restart")

def on_verdict(event, ctx):
    if can(ctx, ctx.unit, "phase_reboot"):
        return [remedy("phase_reboot", ctx.unit)]
    return [restart(ctx.unit)]
"""


def _setup(tmp_path: Path, policy: str) -> Path:
    (tmp_path / "policy.star").write_text(policy)
    cfg = tmp_path / "enmei.toml"
    cfg.write_text('[supervisor]\npolicy = "policy.star"\n[units.web]\ncommand = ["/bin/sleep", "1"]\n')
    return cfg


def test_enmei_check_refuses_a_remedy_the_units_backend_cannot_do(tmp_path: Path) -> None:
    cfg = _setup(tmp_path, BLIND)
    r = enmei("check", str(cfg))
    assert r.returncode == 3, r.stdout
    err = " ".join(r.stderr.split())
    assert f"{tmp_path / 'policy.star'}:3" in err
    assert "remedy 'phase_reboot' needs phase_reboot, which the process backend lacks" in err
    assert "for unit 'web'" in err
    r = enmei("policy", "check", str(tmp_path / "policy.star"), "--config", str(cfg))
    assert r.returncode == 3 and "needs phase_reboot" in " ".join(r.stderr.split())


def test_a_policy_that_asks_can_passes_both_checks(tmp_path: Path) -> None:
    cfg = _setup(tmp_path, CAREFUL)
    r = enmei("check", str(cfg))
    assert r.returncode == 0, r.stderr
    r = enmei("policy", "check", str(tmp_path / "policy.star"), "--config", str(cfg))
    assert r.returncode == 0, r.stderr

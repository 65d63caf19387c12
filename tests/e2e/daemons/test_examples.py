"""``examples/daemons/*.toml`` are valid (``enmei check``, as an operator runs it) and make the choices
the daemon e2e tests prove on the kit's daemons: the same stop signal, kill mode, start-up probe and
probes (kind, protocol check, expected exits, role), only Debian's paths and ports instead of a temp dir's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from enmei import daemons
from enmei.config.load import load_text

pytestmark = [pytest.mark.e2e, pytest.mark.daemons]

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "daemons"


def _choices(unit: dict[str, Any]) -> dict[str, Any]:
    keep = ("kind", "name", "role", "send", "expect", "expect_exit", "fail_after", "interval_s")
    return {"stop_signal": unit.get("stop_signal", "SIGTERM"), "kill_mode": unit.get("kill_mode", "all"),
            "startup_probe": unit.get("startup_probe"), "stop_timeout_s": unit.get("stop_timeout_s"),
            "startup_timeout_s": unit.get("startup_timeout_s"), "has_pre_start": bool(unit.get("pre_start")),
            "probes": [{k: p[k] for k in keep if k in p and p[k] is not None} for p in unit["probes"]]}


@pytest.mark.parametrize("kind", ["nginx", "redis", "postgresql"])
def test_the_example_passes_enmei_check_and_matches_the_tested_kit(kind: str, tmp_path: Path) -> None:
    path = EXAMPLES / f"{kind}.toml"
    r = subprocess.run([sys.executable, "-m", "enmei", "check", str(path)], capture_output=True, text=True,
                       check=False, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    example = load_text(path.read_text(), path).config.units[kind].model_dump()
    d = daemons.prepare(kind)
    try:
        kit = load_text(d.unit_toml(), tmp_path / "kit.toml").config.units[kind].model_dump()
    finally:
        d.cleanup()
    assert _choices(example) == _choices(kit)


@pytest.mark.parametrize("kind", ["nginx", "redis", "postgresql"])
def test_the_readme_shows_the_example_as_it_is(kind: str) -> None:
    """README's "Supervising real daemons" quotes each example without its comments, exactly."""
    readme = (EXAMPLES.parents[1] / "README.md").read_text()
    text = (EXAMPLES / f"{kind}.toml").read_text()
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#")).strip()
    assert f"```toml\n{body}\n```" in readme

"""The log probe on a log file the unit names (``path``): rotation by rename reads the new file from
its start, and a relative path is the unit's cwd's."""

from __future__ import annotations

import os
from pathlib import Path

from enmei.clock import FakeClock
from enmei.config.load import load_text
from enmei.config.model import LogProbe as LogProbeConfig
from enmei.monitor.lograte import LogProbe, _make
from enmei.monitor.registry import ProbeSite


async def test_a_file_rotated_by_rename_is_read_from_the_start_of_the_new_one(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_text("old\n")
    clock = FakeClock()
    probe = LogProbe("u", "log", 1.0, clock, path=path, pattern=None)
    await probe.observe()
    with open(path, "a") as f:
        f.write("one\ntwo\n")
    clock.advance(1.0)
    assert (await probe.observe()).lines == ("one", "two")
    os.rename(path, tmp_path / "app.log.1")
    # the new file is already longer than the old offset: only its inode tells it is another file
    path.write_text("".join(f"new {i}\n" for i in range(5)))
    clock.advance(1.0)
    assert (await probe.observe()).lines == tuple(f"new {i}" for i in range(5))


def test_the_path_option_is_the_units_file_relative_to_its_cwd(tmp_path: Path) -> None:
    loaded = load_text(f"""
[units.app]
command = ["/bin/true"]
cwd = "{tmp_path}"
[[units.app.probes]]
kind = "log"
path = "logs/app.log"
""", tmp_path / "enmei.toml")
    spec = loaded.config.units["app"]
    cfg = next(p for p in spec.probes if isinstance(p, LogProbeConfig))
    probe = _make(ProbeSite("app", "log", spec, None, FakeClock()), cfg)  # type: ignore[arg-type]
    assert probe.path == tmp_path / "logs" / "app.log"

"""Small pieces: state file, summaries, rejuvenation timing, remedy argument checks, log probe, clock."""

from __future__ import annotations

import asyncio
import importlib
import json
import pkgutil
from pathlib import Path

import pytest

import enmei
from enmei.clock import FakeClock, wait_for, within
from enmei.engine.summary import Summaries
from enmei.model import Observation
from enmei.monitor.lograte import LogProbe
from enmei.remedy import REMEDIES
from enmei.remedy.rejuvenate import quiet_threshold
from enmei.visor.base import Identity
from enmei.visor.logs import rotate, tail_lines
from enmei.visor.state import StateFile


def test_state_file_round_trip_and_corruption_is_set_aside(tmp_path: Path) -> None:
    sf = StateFile(tmp_path / "units.json")
    assert sf.load() == {}
    ident = Identity("web", "process", 123, 1700000000.5, 1700000001.0, {"pgid": 123})
    sf.save({"web": ident})
    assert sf.load() == {"web": ident}
    (tmp_path / "units.json").write_text("{half")
    assert sf.load() == {}
    assert list(tmp_path.glob("units.json.corrupt-*"))


def test_summaries_count_and_reset() -> None:
    s = Summaries()
    for i in range(4):
        s.add(Observation("u", "http", i != 2, 10.0 + i, 0.0, {"latency_s": 0.1 * (i + 1)}))
    [(unit, body)] = list(s.drain(20.0))
    assert unit == "u" and body["probes"]["http"] == {"ok": 3, "n": 4}
    m = body["metrics"]["http.latency_s"]
    assert m["n"] == 4 and m["min"] == pytest.approx(0.1) and m["max"] == pytest.approx(0.4)
    assert body["period_s"] == 10.0
    assert list(s.drain(30.0)) == []


def test_quiet_threshold() -> None:
    assert quiet_threshold([1.0, 2.0], 0.2) is None
    assert quiet_threshold([float("nan")] * 10, 0.2) is None
    assert quiet_threshold([float(i) for i in range(11)], 0.2) == pytest.approx(2.0)


def test_remedy_argument_checks_name_what_is_wrong() -> None:
    restart = REMEDIES["restart"]
    assert restart.check_args({"delay_s": 1.5}) is None
    assert "must be int or float, not a bool" in str(restart.check_args({"delay_s": True}))
    assert "takes no argument 'soon'" in str(restart.check_args({"soon": 1}))


async def test_log_probe_counts_new_lines_and_survives_rotation(tmp_path: Path) -> None:
    path = tmp_path / "u.stderr.log"
    path.write_text("old line\n")
    clock = FakeClock()
    probe = LogProbe("u", "log", 1.0, clock, path=path, pattern="ERROR")
    first = await probe.observe()  # starts at the end: old lines are not counted
    assert first.values["lines_per_s"] == 0
    with open(path, "a") as f:
        f.write("a\nERROR b\nc\nERROR d\n")
    clock.advance(2.0)
    obs = await probe.observe()
    assert obs.values == {"lines_per_s": 2.0, "matches_per_s": 1.0}
    path.write_text("x\n")  # truncated (rotated): read again from the start
    clock.advance(1.0)
    assert (await probe.observe()).values["lines_per_s"] == 1.0


def test_rotation_and_tail(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail_lines(path, 2) == ["line 98", "line 99"]
    assert rotate(path, 100, keep=2)
    assert path.stat().st_size == 0 and (tmp_path / "x.log.1").exists()
    path.write_text("y" * 200)
    assert rotate(path, 100, keep=2)
    assert (tmp_path / "x.log.2").read_text().startswith("line 0")
    assert not rotate(path, 100, keep=2)
    assert tail_lines(tmp_path / "missing.log", 3) == []


async def test_within_uses_the_injected_clock() -> None:
    clock = FakeClock()
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(within(clock, asyncio.shield(fut), 5.0))
    for _ in range(5):  # let the timer register its sleep
        await asyncio.sleep(0)
    clock.advance(4.9)
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()
    clock.advance(0.2)
    with pytest.raises(TimeoutError):
        await wait_for(task, 5)
    assert not fut.cancelled()  # shielded
    fut.set_result(1)
    assert await wait_for(within(clock, fut, 1.0), 5) == 1


def test_every_module_imports_and_all_matches_its_exports() -> None:
    """``__all__`` lists real names, and every public module of the package imports."""
    skip = {"enmei.__main__"}
    for info in pkgutil.walk_packages(enmei.__path__, "enmei."):
        if info.name in skip or (".qemu" in info.name and "guest" in info.name):
            continue
        mod = importlib.import_module(info.name)
        for name in getattr(mod, "__all__", []):
            assert hasattr(mod, name), f"{info.name}.__all__ names {name!r}, which it does not define"


def test_record_kinds_are_stable_strings() -> None:
    from enmei.model import RecordKind

    assert json.dumps([str(k) for k in RecordKind])  # journal format: kinds are plain strings
    assert str(RecordKind.REMEDY_OUTCOME) == "remedy.outcome"

"""The contract every backend keeps under the engine: the exact order of a unit's states.

The same scenarios run over the fake process backend (fake clock), the real process backend and the real
QEMU backend (a guest under TCG); each must produce the very same sequence of ``unit.state`` records —
start, an exit seen and restarted, an operator stop and start, a supervisor restart that adopts the unit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from enmei.model import UnitState

from .drivers import Driver, FakeDriver, ProcessDriver, QemuDriver

START = ["starting", "running"]


def _qemu_image() -> str:
    import shutil

    from enmei.visor.qemu import build

    if shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None:
        pytest.fail("QEMU is not installed; run: apt-get install -y qemu-system-x86 qemu-utils")
    return str(build().directory)


@pytest.fixture(params=[
    pytest.param("fake"),
    pytest.param("process", marks=pytest.mark.integration),
    pytest.param("qemu", marks=[pytest.mark.integration, pytest.mark.qemu, pytest.mark.timeout(900)]),
])
async def driver(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Driver]:
    kind = request.param
    d: Driver
    if kind == "fake":
        d = FakeDriver(tmp_path)
    elif kind == "process":
        d = ProcessDriver(tmp_path)
    else:
        d = QemuDriver(tmp_path, await asyncio.to_thread(_qemu_image))
    try:
        yield d
    finally:
        await d.close()
    if isinstance(d, ProcessDriver | QemuDriver):
        assert d.strays() == [], f"{kind}: processes survived the test"


async def test_start_then_operator_stop_and_start(driver: Driver) -> None:
    await driver.start_engine()
    await driver.settled(UnitState.RUNNING)
    assert driver.states == START
    driver.command("stop")
    await driver.settled(UnitState.STOPPED)
    assert driver.states == [*START, "stopping", "stopped"]
    driver.command("start")
    await driver.settled(UnitState.RUNNING)
    assert driver.states == [*START, "stopping", "stopped", *START]
    await driver.stop_engine()
    assert driver.states == [*START, "stopping", "stopped", *START, "stopping", "stopped"]


async def test_an_exit_is_seen_and_restarted_at_once(driver: Driver) -> None:
    await driver.start_engine()
    await driver.settled(UnitState.RUNNING)
    unit = driver.engine.units["u"]
    await driver.wait("a healthy period", lambda: unit.budget.healthy(unit.clock.monotonic() - unit.state_since))
    old = driver.pid()
    driver.kill_unit()
    await driver.wait("the restart", lambda: len(driver.states) >= 5 and driver.engine.units["u"].remedy is None)
    # the exit of a unit running for restart.reset_after_s is restarted without a backoff: straight from
    # exited to starting
    assert driver.states == [*START, "exited", *START]
    assert driver.pid() != old
    await driver.stop_engine()
    assert driver.states[-2:] == ["stopping", "stopped"]


async def test_a_new_supervisor_adopts_the_running_unit(driver: Driver) -> None:
    await driver.start_engine()
    await driver.settled(UnitState.RUNNING)
    pid = driver.pid()
    await driver.stop_engine(leave_running=True)
    assert driver.runs[0] == START  # left running: no stop
    await driver.start_engine()
    await driver.settled(UnitState.RUNNING)
    assert driver.states == ["running"]  # adopted: pending -> running, no start
    assert driver.pid() == pid
    await driver.stop_engine()
    assert driver.runs[1] == ["running", "stopping", "stopped"]

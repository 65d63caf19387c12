"""The crossview probe over a synthetic guest RAM file and console file: suspects, and reasons, never a raise."""

from __future__ import annotations

import json
from pathlib import Path

from enmei.clock import FakeClock
from enmei.monitor.crossview_probe import CrossviewProbe

from .fakeguest import FakeGuest, kernel


def setup(tmp_path: Path, hide: bool) -> tuple[CrossviewProbe, Path, FakeClock]:
    g = FakeGuest()
    g.spawn(1, "init", 0.5, ppid=0)
    g.spawn(7, "httpd", 3.0)
    if hide:
        g.spawn(9, "sleep", 4.0)
    (tmp_path / "ram").write_bytes(bytes(g.ram))
    console = tmp_path / "console.log"
    console.write_text("boot noise\n")
    clock = FakeClock()
    p = CrossviewProbe("vm", "crossview", 1.0, clock, ram_path=tmp_path / "ram", console_path=console,
                       kernel=kernel(), listing_timeout_s=10.0, console_from=0)
    return p, console, clock


async def test_a_process_missing_from_the_listing_is_a_suspect(tmp_path: Path) -> None:
    p, console, _ = setup(tmp_path, hide=True)
    assert (await p.observe()).values["compared"] == 0.0  # no listing yet
    with console.open("a") as f:
        f.write("enmei-ps: begin 1 10.0\nenmei-ps: 1 init\nenmei-ps: 7 httpd\nenmei-ps: end 1 10.1\n")
    obs = await p.observe()
    assert obs.ok and obs.values["compared"] == 1.0 and obs.values["hidden"] == 1.0
    (line,) = obs.lines
    assert json.loads(line) == {"key": "9:4000000000", "what": "process", "pid": 9, "comm": "sleep", "ppid": 1,
                                "uid": 0, "start_s": 4.0, "kthread": False, "how": "proc"}
    await p.aclose()


async def test_a_module_on_no_list_is_a_suspect(tmp_path: Path) -> None:
    g = FakeGuest()
    g.spawn(1, "init", 0.5, ppid=0)
    g.load("ext4")
    rk = g.load("rootkit", on_list=False)
    (tmp_path / "ram").write_bytes(bytes(g.ram))
    console = tmp_path / "console.log"
    console.write_text("enmei-ps: begin 1 10.0\nenmei-ps: 1 init\nenmei-ps: mod ext4\nenmei-ps: mods 1\n"
                       "enmei-ps: end 1 10.1\n")
    p = CrossviewProbe("vm", "crossview", 1.0, FakeClock(), ram_path=tmp_path / "ram", console_path=console,
                       kernel=kernel(), console_from=0)
    obs = await p.observe()
    assert obs.ok and obs.values["hidden"] == 0.0 and obs.values["modules"] == 2.0
    assert obs.values["hidden_modules"] == 1.0 and obs.values["hidden_modules_from_list"] == 1.0
    (line,) = obs.lines
    assert json.loads(line) == {"key": f"mod:rootkit@{rk:#x}", "what": "module", "name": "rootkit",
                                "address": f"{rk:#x}", "state": "live", "how": "list"}
    await p.aclose()


async def test_nothing_to_read_gives_reasons_not_exceptions(tmp_path: Path) -> None:
    p, console, clock = setup(tmp_path, hide=False)
    (tmp_path / "ram").unlink()
    with console.open("a") as f:
        f.write("enmei-ps: begin 1 10.0\nenmei-ps: 1 init\nenmei-ps: end 1 10.1\n")
    obs = await p.observe()
    assert not obs.ok and "cannot open the guest RAM file" in (obs.error or "")
    clock.advance(11.0)
    obs = await p.observe()
    assert not obs.ok and "no process listing for 11 s" in (obs.error or "")
    (tmp_path / "ram").write_bytes(bytes(1 << 20))  # a RAM file without a booted kernel in it
    with console.open("a") as f:
        f.write("enmei-ps: begin 2 12.0\nenmei-ps: end 2 12.1\n")
    obs = await p.observe()
    assert not obs.ok and "no vmcoreinfo" in (obs.error or "")
    await p.aclose()

"""A real guest under TCG: start, every monitor API call, internal snapshots, stop."""

from __future__ import annotations

import asyncio
import os

import psutil
import pytest

from enmei.errors import VisorError
from enmei.model import UnitEventKind
from enmei.visor.base import Capability

from .conftest import VmHarness, http_get, until_answer

pytestmark = [pytest.mark.integration, pytest.mark.qemu]


async def test_lifecycle_and_monitor_api(vmh: VmHarness) -> None:
    b = vmh.backend()
    spec = vmh.spec()
    port = int(spec.forward[0].split(":")[0])
    assert b.capabilities == frozenset(Capability) - {Capability.HANDOVER}

    ident = await b.start("vm", spec)
    assert vmh.kinds("vm") == [UnitEventKind.STARTED]
    started = vmh.events[0].detail
    assert started["accel"] == "tcg" and started["phase_snapshot"] == "enmei-phase-service-ready"
    assert b.alive("vm") and b.identity("vm") == ident
    assert ident.pid != os.getpid() and psutil.Process(ident.pid).ppid() != os.getpid()  # daemonized
    assert abs(psutil.Process(ident.pid).create_time() - ident.create_time) < 0.05
    assert ident.extra["qmp"].endswith("qmp.sock")
    assert list(b.phases("vm")) == ["kernel", "userspace", "network", "service-ready", "data-ready"]

    assert (await until_answer(port)).startswith("enmei-demo 1.0")
    assert (await until_answer(port, "/version")).startswith("enmei-demo")

    # CPU time, memory
    stats = await b.stats("vm")
    assert stats["cpu_seconds"] > 0 and 0 < stats["vcpu_seconds"] <= stats["cpu_seconds"] + 0.5
    assert stats["rss_bytes"] > 50 * 2**20 and stats["guest_memory_bytes"] == 256 * 2**20
    assert stats["panics"] == 0 and stats["panicked"] == 0

    # block I/O of the data disk, network traffic: both grow with the service's work
    blk0 = (await b.block_stats("vm"))["data"]
    net0 = await b.net_stats("vm")
    for i in range(3):
        assert await http_get(port, f"/cgi-bin/data?put=line{i}") == (200, "stored\n")
    assert (await http_get(port, "/cgi-bin/data?get"))[1] == "line0\nline1\nline2\n"
    blk1 = (await b.block_stats("vm"))["data"]
    net1 = await b.net_stats("vm")
    assert blk1["wr_bytes"] > blk0["wr_bytes"] and blk1["flush_operations"] > blk0["flush_operations"]
    assert net1["tx_packets"] >= net0["tx_packets"] + 6 and net1["rx_packets"] >= net0["rx_packets"] + 6
    assert net1["tx_bytes"] > net0["tx_bytes"] and net1["rx_bytes"] > net0["rx_bytes"]

    # guest physical memory: the BIOS area is not all zero; out of range is refused
    mem = await b.read_memory("vm", 0xF0000, 0x10000)
    assert len(mem) == 0x10000 and mem.count(0) < len(mem)
    with pytest.raises(VisorError, match="outside"):
        await b.read_memory("vm", 256 * 2**20 - 10, 4096)
    assert not list((vmh.state_dir / "qemu" / "vm").glob("pmem-*"))

    # keyboard injection: the guest echoes what is typed on tty1 to its serial console
    console = b.log_path("vm", "console")
    assert console is not None and console.exists()
    await b.send_keys("vm", "Hello, enmei!\n")
    await vmh.wait_for("the typed line on the console",
                       lambda: "enmei-keys: Hello, enmei!" in console.read_text(errors="replace"))

    # internal snapshots: save, list, load (RAM goes back: a knob set later is gone), delete
    await b.snapshot_save("vm", "t1")
    assert set(await b.snapshot_list("vm")) == {"enmei-phase-service-ready", "t1"}
    assert await http_get(port, "/cgi-bin/fault?latency=700") == (200, "ok latency\n")
    await b.snapshot_load("vm", "t1")
    loop = asyncio.get_running_loop()
    t = loop.time()
    assert (await until_answer(port)).startswith("enmei-demo")
    assert loop.time() - t < 0.7  # the latency knob lived in guest RAM after the snapshot
    await b.snapshot_delete("vm", "t1")
    assert await b.snapshot_list("vm") == ["enmei-phase-service-ready"]
    with pytest.raises(VisorError, match="tag"):
        await b.snapshot_save("vm", "bad tag")

    # stop: ACPI power button, the guest powers off
    await b.stop("vm", timeout_s=20)
    assert vmh.kinds("vm")[-1] == UnitEventKind.STOPPED
    assert vmh.events[-1].detail["reason"] == "guest-shutdown"
    assert not b.alive("vm") and b.identity("vm") is None
    assert not psutil.pid_exists(ident.pid) or psutil.Process(ident.pid).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(VisorError, match="not running"):
        await b.stats("vm")
    await b.stop("vm", timeout_s=1)  # stopping a stopped unit does nothing

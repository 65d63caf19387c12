"""The monitor API of VM units (``MonitorApi``, composed by ``QemuBackend``): observe and act from
outside the guest.

* ``stats``: the QEMU process's CPU time (``cpu_seconds``), the guest's vCPU threads' CPU time
  (``vcpu_seconds``), resident memory, uptime, panics and resets seen, whether the guest runs; and the
  aging of the QEMU process itself (``qemu_private_bytes``, ``qemu_fds``, ``qemu_threads``,
  ``qemu_age_s``: what ``rejuvenate_vmm`` renews);
* ``block_stats``: per block node (``data``) the counters of ``query-blockstats``;
* ``net_stats``: frames and bytes the guest sent and received, counted from ``filter-dump`` files
  (``enmei.visor.qemu.netcount`` says why this method);
* ``read_memory``: guest physical memory through ``pmemsave`` (64 MiB at most per call);
* ``send_keys``: text typed on the guest's PS/2 keyboard through ``send-key`` (refused while paused);
* ``set_link``: the guest's network card connected or disconnected (isolation);
* ``snapshot_save/load/list/delete``: internal snapshots of the machine state (RAM and devices) in the
  ``sys`` node; the data disk is not part of them (see ``backend``).

Every method raises ``VisorError`` (``QmpError`` for QMP failures) for a unit that is not running or a
command that fails; none waits longer than the unit's ``qmp_timeout_s`` per QMP command.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil

from enmei.errors import VisorError
from enmei.visor.qemu.cmdline import NIC_ID, dump_object
from enmei.visor.qemu.errors import QmpError
from enmei.visor.qemu.machine import Machine

__all__ = ["DUMP_ROTATE_BYTES", "MAX_MEMORY_READ", "MonitorApi", "text_to_qcodes"]

MAX_MEMORY_READ = 64 * 2**20
DUMP_ROTATE_BYTES = 16 * 2**20
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# US layout: characters typed without shift, and those that need it (with their base key).
_PLAIN = {" ": "spc", "\n": "ret", "\t": "tab", "-": "minus", "=": "equal", "[": "bracket_left",
          "]": "bracket_right", ";": "semicolon", "'": "apostrophe", "`": "grave_accent",
          "\\": "backslash", ",": "comma", ".": "dot", "/": "slash"}
_SHIFTED = {"!": "1", "@": "2", "#": "3", "$": "4", "%": "5", "^": "6", "&": "7", "*": "8", "(": "9",
            ")": "0", "_": "minus", "+": "equal", "{": "bracket_left", "}": "bracket_right",
            ":": "semicolon", '"': "apostrophe", "~": "grave_accent", "|": "backslash", "<": "comma",
            ">": "dot", "?": "slash"}


def text_to_qcodes(text: str) -> list[list[str]]:
    """The key chords (QEMU qcodes) that type ``text`` on a US keyboard.

    >>> text_to_qcodes("Hi!\\n")
    [['shift', 'h'], ['i'], ['shift', '1'], ['ret']]

    Raises ``ValueError`` for a character that has no key.
    """
    chords: list[list[str]] = []
    for ch in text:
        if ch.isascii() and (ch.islower() or ch.isdigit()):
            chords.append([ch])
        elif ch.isascii() and ch.isupper():
            chords.append(["shift", ch.lower()])
        elif ch in _PLAIN:
            chords.append([_PLAIN[ch]])
        elif ch in _SHIFTED:
            chords.append(["shift", _SHIFTED[ch]])
        else:
            raise ValueError(f"no key types {ch!r}")
    return chords


class MonitorApi:
    """Monitor API methods over the unit machines that ``require(name, action)`` returns (it raises
    ``VisorError`` for a unit that is not running)."""

    def __init__(self, require: Callable[[str, str], Machine]) -> None:
        self._lookup = require

    def _require(self, name: str, action: str) -> Machine:
        return self._lookup(name, action)

    async def stats(self, name: str) -> dict[str, float]:
        machine = self._require(name, "stats")
        proc = machine.proc
        assert proc is not None
        out: dict[str, float] = {}
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                out["cpu_seconds"] = times.user + times.system
                out["cpu_percent"] = proc.cpu_percent(None)
                mem = proc.memory_info()
                out["rss_bytes"] = float(mem.rss)
                # QEMU's own aging, apart from the guest's memory (what ``rejuvenate_vmm`` renews): its
                # resident memory that is not file or shared pages (with shared RAM: none of the guest's),
                # its open fds and threads, and the age of the process
                out["qemu_private_bytes"] = float(max(0, mem.rss - mem.shared))
                out["qemu_fds"] = float(proc.num_fds())
                out["qemu_threads"] = float(proc.num_threads())
                out["qemu_age_s"] = max(0.0, machine.clock.wall() - proc.create_time())
                tids = set(machine.vcpu_tids)
                out["vcpu_seconds"] = sum(t.user_time + t.system_time for t in proc.threads() if t.id in tids)
        except psutil.Error as exc:
            raise VisorError(name, "stats", f"QEMU pid {machine.pid}: {exc}") from exc
        out["guest_memory_bytes"] = float(machine.spec.memory_mib * 2**20)
        out["uptime_s"] = machine.clock.monotonic() - machine.started_mono
        out["panics"] = float(machine.panics)
        out["resets"] = float(machine.resets)
        out["panicked"] = 1.0 if machine.panicked else 0.0
        return out

    async def block_stats(self, name: str) -> dict[str, dict[str, float]]:
        machine = self._require(name, "block stats")
        out: dict[str, dict[str, float]] = {}
        reply = await machine.qmp().execute("query-blockstats")
        try:
            for entry in reply:
                key = str(entry.get("node-name") or entry.get("device") or entry.get("qdev") or "?")
                st = entry.get("stats") or {}
                out[key] = {
                    "rd_bytes": float(st.get("rd_bytes", 0)), "wr_bytes": float(st.get("wr_bytes", 0)),
                    "rd_operations": float(st.get("rd_operations", 0)),
                    "wr_operations": float(st.get("wr_operations", 0)),
                    "flush_operations": float(st.get("flush_operations", 0)),
                    "rd_total_time_s": float(st.get("rd_total_time_ns", 0)) / 1e9,
                    "wr_total_time_s": float(st.get("wr_total_time_ns", 0)) / 1e9,
                    "wr_highest_offset": float(st.get("wr_highest_offset", 0)),
                }
        except (AttributeError, TypeError, ValueError, OverflowError) as exc:
            raise VisorError(name, "block stats", f"unexpected QMP reply: {str(reply)[:200]}") from exc
        return out

    async def net_stats(self, name: str) -> dict[str, float]:
        """``tx_*`` = sent by the guest, ``rx_*`` = received by it, since this QEMU started."""
        machine = self._require(name, "network stats")
        out: dict[str, float] = {}
        for direction in ("tx", "rx"):
            path = machine.paths.net_dump(direction)
            counter = machine.net[direction]
            try:
                await asyncio.to_thread(counter.read_file, path)
                if counter.offset > DUMP_ROTATE_BYTES:
                    await machine.qmp().execute("object-del", {"id": f"dump-{direction}"})
                    await asyncio.to_thread(counter.read_file, path)
                    counter.restart()
                    await machine.qmp().execute("object-add", dump_object(machine.paths, direction))
            except ValueError as exc:  # not a pcap file (QEMU writes it; a damaged one is an error, not a crash)
                raise VisorError(name, "network stats", f"{path}: {exc}") from exc
            out[f"{direction}_packets"] = float(counter.packets)
            out[f"{direction}_bytes"] = float(counter.bytes)
            out[f"{direction}_syn"] = float(counter.syn)  # TCP connections opened by that side
        return out

    async def read_memory(self, name: str, address: int, size: int) -> bytes:
        """``size`` bytes of guest physical memory from ``address`` (``VisorError`` beyond its RAM)."""
        machine = self._require(name, "memory read")
        limit = machine.spec.memory_mib * 2**20
        if size <= 0 or size > MAX_MEMORY_READ or address < 0 or address + size > limit:
            raise VisorError(name, "memory read", f"{size} bytes at {address:#x}: outside 1.."
                             f"{MAX_MEMORY_READ} bytes within the guest's {machine.spec.memory_mib} MiB")
        path = machine.paths.dir / f"pmem-{uuid.uuid4().hex}.bin"
        try:
            await machine.qmp().execute("pmemsave", {"val": address, "size": size, "filename": str(path)})
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            raise VisorError(name, "memory read", str(exc)) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if len(data) != size:
            raise VisorError(name, "memory read", f"got {len(data)} of {size} bytes")
        return data

    async def set_link(self, name: str, up: bool) -> None:
        """Connect or disconnect the guest's network card (``set_link``): while it is down the guest
        sends and receives nothing, its forwarded ports included. A new QEMU of the unit (a restart,
        a standby's takeover) starts with the link up."""
        machine = self._require(name, "network link")
        await machine.qmp().execute("set_link", {"name": NIC_ID, "up": bool(up)})

    async def guest_running(self, name: str) -> bool:
        """Whether the guest's CPUs run (``query-status``): false while it is paused or panicked."""
        machine = self._require(name, "status")
        status = await machine.qmp().execute("query-status")
        return bool(status.get("running"))

    async def copy_data_disk(self, name: str, dest: Path) -> float:
        """A crash-consistent copy of the guest's data disk at ``dest`` (sparse), for VM Shadow: the guest is
        paused (QMP ``stop``) while the file is copied and resumed after (also if the copy fails; left
        paused if it was paused). Returns the seconds it was paused. ``VisorError`` if the copy fails."""
        machine = self._require(name, "copy data disk")
        qmp = machine.qmp()
        was_running = await self.guest_running(name)
        t0 = time.monotonic()
        if was_running:
            await qmp.execute("stop")
        try:
            proc = await asyncio.create_subprocess_exec(
                "cp", "--sparse=always", "--reflink=auto", str(machine.paths.data_disk), str(dest),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            _, err = await proc.communicate()
            if proc.returncode != 0:
                raise VisorError(name, "copy data disk", f"cp exited {proc.returncode}: {err.decode(errors='replace')}")
        finally:
            if was_running:
                await qmp.execute("cont")
        return time.monotonic() - t0

    async def send_keys(self, name: str, text: str) -> None:
        """Type ``text`` (US layout, ASCII; ``\\n`` is Enter) on the guest's keyboard.

        Refused (``VisorError``, nothing typed) while the guest is paused: keys QEMU queued for a stopped
        guest would arrive all at once when it resumes, which is not what the caller typed when."""
        machine = self._require(name, "key injection")
        try:
            chords = text_to_qcodes(text)
        except ValueError as exc:
            raise VisorError(name, "key injection", str(exc)) from exc
        if not await self.guest_running(name):
            raise VisorError(name, "key injection", "the guest is paused")
        for chord in chords:
            keys = [{"type": "qcode", "data": k} for k in chord]
            await machine.qmp().execute("send-key", {"keys": keys, "hold-time": 20})
            await machine.clock.sleep(0.03)

    # -- internal snapshots ------------------------------------------------------------------------

    async def snapshot_save(self, name: str, tag: str) -> None:
        """Save the machine state as ``tag`` (replacing an older one of that name); the guest pauses
        for the save (about 0.1 s for 256 MiB under TCG) and runs on."""
        machine = self._require(name, "snapshot save")
        _check_tag(name, tag)
        if tag in await self.snapshot_list(name):
            await self.snapshot_delete(name, tag)
        await machine.qmp().run_job("snapshot-save", {"tag": tag, "vmstate": "sys", "devices": ["sys"]},
                                    timeout_s=max(30.0, machine.spec.qmp_timeout_s))

    async def snapshot_load(self, name: str, tag: str) -> None:
        """Load snapshot ``tag``; the guest runs afterwards (also if it was paused or panicked).

        The data disk is not rolled back. An unknown tag raises ``VisorError`` and changes nothing. A
        load that fails (a corrupt snapshot) raises ``QmpError`` and leaves the guest paused, since
        its state may be half loaded: ``cold_reboot`` or another load makes it run again."""
        machine = self._require(name, "snapshot load")
        _check_tag(name, tag)
        if tag not in await self.snapshot_list(name):
            raise VisorError(name, "snapshot load", f"no snapshot {tag!r}")
        await machine.qmp().run_job("snapshot-load", {"tag": tag, "vmstate": "sys", "devices": ["sys"]},
                                    timeout_s=max(30.0, machine.spec.qmp_timeout_s))
        machine.console.forget_phases()
        status = await machine.qmp().execute("query-status")
        if not status.get("running"):
            await machine.qmp().execute("cont")
        machine.panicked = False

    async def snapshot_list(self, name: str) -> list[str]:
        machine = self._require(name, "snapshot list")
        nodes = await machine.qmp().execute("query-named-block-nodes", {"flat": True})
        for node in nodes:
            if node.get("node-name") == "sys":
                return [str(s["name"]) for s in node.get("image", {}).get("snapshots", [])]
        raise QmpError(name, "snapshot list", "the sys block node is missing")

    async def snapshot_delete(self, name: str, tag: str) -> None:
        machine = self._require(name, "snapshot delete")
        _check_tag(name, tag)
        await machine.qmp().run_job("snapshot-delete", {"tag": tag, "devices": ["sys"]},
                                    timeout_s=max(30.0, machine.spec.qmp_timeout_s))
        machine.snapshot_deleted(tag)


def _check_tag(name: str, tag: str) -> None:
    if not _TAG.match(tag):
        raise VisorError(name, "snapshot", f"tag {tag!r}: use letters, digits, '_', '.', '-'")


"""The ``crossview`` probe: each listing the guest prints of its ``/proc`` checked against its memory.

Per observation: the console lines appended since the last one are read (``enmei-ps:`` listings, see
``enmei.monitor.crossview``); when a listing has completed, the task list and the pid tree are read
from the guest's shared RAM file *after* it, and ``compare`` tells which processes lived through the
listing without being in it (``how = "proc"``), and which hold a pid but are not on the task list
(``how = "list"``); likewise for kernel modules (``enmei.monitor.crossview_modules``: the guest's
``/proc/modules`` against the module list and a scan of the modules area). The observation (``values``:
``compared``, ``hidden``, ``hidden_from_list``, ``hidden_modules``, ``hidden_modules_from_list``,
``tasks``, ``modules``, ``read_ms``, ``listing_seq``; ``lines``: one JSON object per suspect) goes to the
``crossview`` detector (``enmei.detect.crossview``), which wants a suspect to persist before it judges.

It never raises for what it observes: no RAM file, no vmcoreinfo yet, a view that cannot be read
(loops, wild pointers, a list changing under the walk, another kernel) is ``ok=False`` with the reason;
no listing for ``listing_timeout_s`` too (a guest that stopped printing, or is paused). Reads run in a
worker thread (locating the vmcoreinfo scans the RAM once per boot: ~0.5 s for 1 GiB).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from enmei.clock import Clock
from enmei.model import Observation
from enmei.monitor.base import Probe
from enmei.monitor.crossview import Difference, InsideListing, InsideReader, OutsideView, compare, read_outside
from enmei.monitor.crossview_files import FileView, compare_files, read_files
from enmei.monitor.crossview_modules import ModuleDifference, ModuleReader, ModuleView, compare_modules
from enmei.visor.qemu.errors import KernelInfoError
from enmei.visor.qemu.guestmem import GuestMemory, MemoryReadError
from enmei.visor.qemu.kernelinfo import KernelInfo, load

__all__ = ["CrossviewProbe", "suspect_lines"]

_MAX_READ = 4 << 20


def suspect_lines(diff: Difference, mods: ModuleDifference | None = None,
                  files: list[str] | None = None) -> tuple[str, ...]:
    """One JSON line per suspect of ``diff``, ``mods`` and ``files`` (what the detector reads): a process
    (``what = "process"``, key ``PID:START_NS``), a module (``what = "module"``, key ``mod:NAME@ADDR``) or
    a file (``what = "file"``, key ``file:PATH``, ``how = "ls"``: on the disk, not in the guest's ls)."""
    out: dict[str, dict[str, object]] = {}
    for how, tasks in (("list", diff.hidden_from_list), ("proc", diff.hidden)):
        for t in tasks:
            key = f"{t.pid}:{t.start_ns}"
            out.setdefault(key, {"key": key, "what": "process", **t.to_json(), "how": how})
    if mods is not None:
        for how, modules in (("list", mods.hidden_from_list), ("proc", mods.hidden)):
            for m in modules:
                key = f"mod:{m.key}"
                out.setdefault(key, {"key": key, "what": "module", **m.to_json(), "how": how})
    for path in files or ():
        out.setdefault(f"file:{path}", {"key": f"file:{path}", "what": "file", "path": path, "how": "ls"})
    return tuple(json.dumps(v, sort_keys=True) for v in out.values())


class CrossviewProbe(Probe):
    """See the module docstring. ``console_from`` is where reading the console starts (default: its end
    now, so that the output of earlier boots is not taken for this one's)."""

    def __init__(self, unit: str, name: str, interval_s: float, clock: Clock, *, ram_path: Path,
                 console_path: Path, kernel: KernelInfo | Path, listing_timeout_s: float = 30.0,
                 console_from: int | None = None, data_disk: Path | None = None,
                 file_dirs: tuple[str, ...] = ()) -> None:
        super().__init__(unit, name, interval_s, clock)
        self.ram_path = ram_path
        self.console_path = console_path
        self._kernel = kernel  # a path: derived (or read from the cache) at the first comparison
        self.listing_timeout_s = listing_timeout_s
        self._offset = console_from if console_from is not None else self._size()
        self._partial = b""
        self._inside = InsideReader()
        self._mem: GuestMemory | None = None
        self._modules: ModuleReader | None = None
        self._since = clock.monotonic()
        self.last_views: tuple[OutsideView, ...] = ()
        self.last_module_views: tuple[ModuleView, ...] = ()
        self.data_disk = data_disk
        self.file_dirs = file_dirs
        self._files_before: FileView | None = None
        self.last_files_reason = ""

    def _size(self) -> int:
        try:
            return self.console_path.stat().st_size
        except OSError:
            return 0

    def _lines(self) -> list[str]:
        try:
            with open(self.console_path, "rb") as f:
                if f.seek(0, 2) < self._offset:
                    self._offset, self._partial = 0, b""
                f.seek(self._offset)
                data = f.read(_MAX_READ)
        except OSError:
            return []
        self._offset += len(data)
        chunks = (self._partial + data).split(b"\n")
        self._partial = chunks.pop()[-65536:]
        return [c.decode("utf-8", "replace").rstrip("\r") for c in chunks]

    @property
    def kernel(self) -> KernelInfo:
        if isinstance(self._kernel, Path):
            self._kernel = load(self._kernel)
        return self._kernel

    def _views(self) -> tuple[tuple[OutsideView, ...], tuple[ModuleView, ...]]:
        """The outside views now (processes, modules); raises MemoryReadError / KernelInfoError."""
        if self._mem is None:
            self._mem = GuestMemory.open(self.ram_path, label=self.unit)
        self._mem.locate(release=self.kernel.release, build_id=self.kernel.build_id)
        if self._modules is None:
            self._modules = ModuleReader(self.kernel)
        procs = read_outside(self._mem, self.kernel, "list"), read_outside(self._mem, self.kernel, "pids")
        return procs, self._modules.read(self._mem)

    def _check(self, listing: InsideListing) -> tuple[Difference, ModuleDifference, tuple[OutsideView, ...]]:
        try:
            views, mviews = self._views()
        except (MemoryReadError, KernelInfoError) as exc:
            if self._mem is not None:
                self._mem.close()
                self._mem = None  # map it again next time: the file may be a new boot's
            return Difference((), (), reason=str(exc)), ModuleDifference((), (), reason=str(exc)), ()
        self.last_module_views = mviews
        return compare(listing, views), compare_modules(listing.modules, mviews), views

    def _files(self, listing: InsideListing) -> tuple[list[str], str]:
        """Hidden files (in the outside reads before and after ``listing``, not in it) and why none could be
        told; nothing to do without watched directories."""
        if self.data_disk is None or not self.file_dirs:
            return [], ""
        after = read_files(self.data_disk, self.file_dirs)
        before, self._files_before = self._files_before, after
        return compare_files(listing.files, before, after)

    async def observe(self) -> Observation:
        now = self.clock.monotonic()
        done = self._inside.feed(await asyncio.to_thread(self._lines))
        if not done:
            if now - self._since > self.listing_timeout_s:
                return self._obs(False, {"compared": 0.0}, f"the guest printed no process listing for "
                                                           f"{now - self._since:.0f} s (paused, or not listing)")
            return self._obs(True, {"compared": 0.0})
        self._since = now
        listing = done[-1]
        diff, mods, views = await asyncio.to_thread(self._check, listing)
        hidden_files, files_reason = await asyncio.to_thread(self._files, listing)
        self.last_views = views
        if not diff.conclusive or not mods.conclusive:
            return self._obs(False, {"compared": 0.0, "listing_seq": float(listing.seq)},
                             diff.reason or mods.reason)
        mviews = self.last_module_views
        obs = self._obs(True, {"compared": 1.0, "hidden": float(len(diff.hidden)),
                               "hidden_from_list": float(len(diff.hidden_from_list)),
                               "tasks": float(len(views[0].tasks)), "inside": float(len(listing.pids)),
                               "read_ms": sum(v.read_ms for v in views), "listing_seq": float(listing.seq),
                               "hidden_modules": float(len(mods.hidden)),
                               "hidden_modules_from_list": float(len(mods.hidden_from_list)),
                               "modules": float(len(mviews[1].modules)) if mviews else 0.0,
                               "module_read_ms": sum(v.read_ms for v in mviews),
                               "hidden_files": float(len(hidden_files)),
                               "files_compared": 0.0 if files_reason or not self.file_dirs else 1.0})
        self.last_files_reason = files_reason  # the first look, a torn read: no file comparison, not a failure
        return Observation(obs.unit, obs.probe, obs.ok, obs.mono, obs.wall, obs.values, None,
                           suspect_lines(diff, mods, hidden_files))

    async def aclose(self) -> None:
        if self._mem is not None:
            self._mem.close()
            self._mem = None

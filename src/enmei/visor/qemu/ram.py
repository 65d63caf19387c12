"""Shared, file-backed guest RAM for VM units (``ram = "shared"``, or ``"auto"`` with room for it).

Why: a guest whose RAM is a file that QEMU maps with ``share=on`` can be handed to a fresh QEMU process
(``rejuvenate_vmm``, ``enmei.visor.qemu.vmm``) by a local migration with the ``x-ignore-shared``
capability: the new process maps the same file and only device state travels (a few hundred KiB, not
the guest's memory). Private RAM must be copied instead. Shared RAM costs no more memory than private
RAM (the same guest pages, counted as the tmpfs's ``Shmem`` instead of QEMU's anonymous memory), so
``auto`` uses it whenever ``/dev/shm`` has room.

Where: ``/dev/shm/enmei-HASH/ram[-SLOT]`` (``MachinePaths.ram``), the directory made mode 0700 by enmei
and owned by it; one file per QEMU slot, except that a VMM rejuvenation links the running slot's file
under the new slot's name (the same memory). The file of a slot goes with the slot's files (a standby
dropped, a takeover swept) and with the unit (its QEMU stopped or exited: ``remove``). A new QEMU never
maps a file left behind (``fresh``): a stale name could still be a link to a running guest's memory.
RAM left by a guest whose QEMU and enmei were both killed, of a state dir since deleted, would hold the
tmpfs's memory for good: ``sweep_unheld`` (at a QEMU backend's first start) removes the RAM folders of
this user where no process holds any file.

Room: ``resolve`` checks that ``/dev/shm`` has the guest's RAM free (twice with a warm standby, which
has RAM of its own) before the first QEMU starts; ``shared`` without room is a ``StartError`` naming the
figures, ``auto`` then falls back to private RAM (logged, and named in ``STARTED`` as ``ram``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from enmei.config.qemu import QemuUnit
from enmei.errors import StartError
from enmei.visor.qemu.cmdline import RAM_ROOT, MachinePaths

__all__ = ["FreeFn", "check_file", "free_bytes", "fresh", "held_under", "needed_bytes", "remove", "resolve",
           "sweep_unheld"]

log = logging.getLogger(__name__)

_MIB = 2**20

FreeFn = Callable[[Path], "int | None"]


def free_bytes(folder: Path) -> int | None:
    """Bytes free for an unprivileged writer on the file system of ``folder`` (None: not there)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def needed_bytes(spec: QemuUnit) -> int:
    """What the unit's guest RAM takes in the tmpfs: its RAM, and a standby's as much again."""
    return spec.memory_mib * _MIB * (2 if spec.uses_standby else 1)


def resolve(name: str, spec: QemuUnit, paths: MachinePaths, free_fn: FreeFn | None = None) -> QemuUnit:
    """``spec`` with ``ram`` resolved to ``shared`` or ``private`` for a start of the unit.

    Raises ``StartError`` for ``ram = "shared"`` when ``/dev/shm`` is missing or has less room than
    ``needed_bytes`` (its files of this unit, about to be replaced, count as free). ``free_fn`` measures
    the room (default ``free_bytes``; the backend passes its host's)."""
    if spec.ram == "private":
        return spec
    root = paths.ram_dir.parent
    free = (free_fn or free_bytes)(root)
    if free is not None:
        with contextlib.suppress(OSError):
            free += sum(f.stat().st_size for f in paths.ram_dir.iterdir())
    need = needed_bytes(spec)
    if free is not None and free >= need:
        return spec.model_copy(update={"ram": "shared"})
    have = "it does not exist" if free is None else f"it has {free // _MIB} MiB free"
    why = (f"shared guest RAM needs {need // _MIB} MiB in {root} (memory_mib = {spec.memory_mib}"
           f"{', twice for the warm standby' if spec.uses_standby else ''}), but {have}")
    if spec.ram == "shared":
        raise StartError(name, "start", f"{why}: enlarge it (mount -o remount,size=... {root}), lower "
                                        "memory_mib, or set ram = \"private\" (rejuvenate_vmm then copies the RAM)")
    log.warning("unit %s: %s; its RAM is private (rejuvenate_vmm copies it)", name, why)
    return spec.model_copy(update={"ram": "private"})


def fresh(paths: MachinePaths) -> None:
    """Before a QEMU of ``paths``' slot starts with RAM of its own: the unit's RAM directory exists (mode
    0700, enmei's) and no file is left at the slot's name. Raises ``OSError``."""
    paths.ram_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = paths.ram_dir.lstat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077 or paths.ram_dir.is_symlink():
        raise OSError(f"{paths.ram_dir} is not a private directory of this user")
    with contextlib.suppress(FileNotFoundError):
        paths.ram.unlink()


def check_file(paths: MachinePaths, spec: QemuUnit) -> str | None:
    """Why the slot's RAM file cannot be handed to another QEMU (missing, wrong size), or None."""
    try:
        size = paths.ram.stat().st_size
    except OSError as exc:
        return f"the shared RAM file {paths.ram} is missing ({exc.strerror})"
    if size != spec.memory_mib * _MIB:
        return f"the shared RAM file {paths.ram} holds {size} bytes, not {spec.memory_mib} MiB"
    return None


def remove(paths: MachinePaths) -> None:
    """Remove the slot's RAM file, and the unit's RAM directory once empty. Never raises."""
    with contextlib.suppress(OSError):
        paths.ram.unlink()
    with contextlib.suppress(OSError):
        paths.ram_dir.rmdir()


def held_under(root: Path) -> set[Path]:
    """The files below ``root`` that some process has open or mapped (``/proc/PID/fd``, ``/proc/PID/maps``);
    processes that cannot be read are skipped (they are another user's: their files are not ours either)."""
    prefix = str(root).rstrip("/") + "/"
    out: set[Path] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith(prefix):
                        out.add(Path(target.removesuffix(" (deleted)")))
        with contextlib.suppress(OSError), open(f"/proc/{pid}/maps", errors="replace") as maps:
            for line in maps:
                at = line.find(prefix)
                if at >= 0:
                    out.add(Path(line[at:].rstrip("\n").removesuffix(" (deleted)")))
    return out


def sweep_unheld(root: Path = RAM_ROOT, *, min_age_s: float = 60.0) -> list[Path]:
    """Remove this user's guest RAM folders (``enmei-*``, mode 0700) in ``root`` where no process holds any
    file: a guest's memory that no QEMU maps is no guest's any more (a next start replaces it anyway,
    ``fresh``). A folder with no file yet, or with a file changed in the last ``min_age_s``, is left
    alone: a QEMU may be about to create or map its file (another supervisor's, or another test
    worker's, start in progress). Returns the folders removed; never raises."""
    removed: list[Path] = []
    try:
        folders = [d for d in root.iterdir() if d.name.startswith("enmei-")]
    except OSError:
        return removed
    held: set[Path] | None = None
    for d in folders:
        try:
            st = d.lstat()
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
                continue
            files = list(d.iterdir())
            newest = max([st.st_mtime, *(f.lstat().st_mtime for f in files)])
        except OSError:
            continue
        if time.time() - newest < min_age_s:
            continue
        if held is None:
            held = held_under(root)
        if any(f in held for f in files):
            continue
        with contextlib.suppress(OSError):
            for f in files:
                f.unlink()
            d.rmdir()
            removed.append(d)
            log.info("removed %s: guest RAM that no process holds (%d file(s))", d, len(files))
    return removed

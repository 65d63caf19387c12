"""The takeover record: the QEMU taking over a unit's guest, named on disk before the old one is ended.

A warm standby's takeover (``StandbyManager.take_over``: a phase reboot, the swap of a shadow update)
moves the unit's ports to the new QEMU, resumes it and then ends the old one. A supervisor killed in
between — the new QEMU holding the ports, the old one paused or gone, the engine not yet told — used to
leave its successor a saved identity naming a dead QEMU (or one that had let the ports go), and the
successor cold-started the unit, killing the new QEMU (an update's clone that already ran the update, or
the standby that was the repair). With this record the successor adopts the new QEMU instead
(``QemuBackend.recover``): the old one ended if it still runs, the new one resumed, given the unit's
forwarded ports and its console, its data-disk gate opened (the old QEMU is gone: ``disks``, rule 3).

``<state>/qemu/<unit>/takeover.json``, format 1: ``identity`` (the new QEMU's, as the backend saves one;
``extra.takeover`` true), ``old`` (``pid`` and ``create_time`` of the QEMU being replaced), and
``temporary_ports`` (the new QEMU's own forwards from before it took the unit's, to drop). Written right
before the old QEMU is paused (a temporary file, then ``os.replace``: a reader sees a whole record or
none; no fsync: the record must outlive the supervisor's death, not the machine's, which ends every
QEMU too). It is only a hint: a record whose new QEMU is not the one in its slot (pid, create time,
command line) is stale and ignored, and so is one whose old QEMU still runs unless the new one already
holds the unit's forwarded ports (the takeover moves them before it ends the old QEMU: the successor then
ends the old one and adopts the new one); a successor that adopted or started the unit removes it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from enmei.visor.base import Identity
from enmei.visor.qemu.cmdline import MachinePaths

__all__ = ["FORMAT", "Handoff", "clear", "path", "read", "write"]

FORMAT = 1


@dataclass(frozen=True)
class Handoff:
    """A takeover in flight: the QEMU taking over (``identity``) and the one it replaces."""

    identity: Identity
    old_pid: int
    old_create_time: float
    temporary_ports: tuple[int, ...] = ()


def path(paths: MachinePaths) -> Path:
    """The unit's takeover record (module docstring)."""
    return paths.dir / "takeover.json"


def write(paths: MachinePaths, record: Handoff) -> None:
    """Name ``record``'s QEMU as the one taking over; raises ``OSError`` (a full disk: the caller goes on
    without it, as before the record existed)."""
    target = path(paths)
    tmp = target.with_name(target.name + ".tmp")
    ident = record.identity.to_json()
    ident["extra"] = {**ident["extra"], "takeover": True}
    tmp.write_text(json.dumps({"format": FORMAT, "identity": ident, "old": {
        "pid": record.old_pid, "create_time": record.old_create_time},
        "temporary_ports": list(record.temporary_ports)}) + "\n")
    os.replace(tmp, target)


def read(paths: MachinePaths) -> Handoff | None:
    """The unit's takeover record, or None (none, unreadable, another format)."""
    try:
        data = json.loads(path(paths).read_text())
        if data.get("format") != FORMAT:
            return None
        return Handoff(Identity.from_json(data["identity"]), int(data["old"]["pid"]),
                       float(data["old"]["create_time"]), tuple(int(p) for p in data.get("temporary_ports", [])))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def clear(paths: MachinePaths) -> None:
    """Remove the unit's takeover record (and a temporary file left by a supervisor killed writing it)."""
    target = path(paths)
    for f in (target, target.with_name(target.name + ".tmp")):
        f.unlink(missing_ok=True)

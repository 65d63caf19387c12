"""Isolation of a suspect guest: ``isolate`` cuts a unit's network, keeps a snapshot for forensics.

For a verdict that the guest is compromised (``keylogger_suspected``, ``bot_suspected``: see
``enmei.detect.keylogger``) restarting it would destroy the evidence and let it go on leaking. This
remedy, for backends with the ``net_link`` capability (the QEMU backend), disconnects the unit's network
card first (the guest runs on, sends and receives nothing; its forwarded ports stop answering too), then,
if the backend has ``snapshot``, saves the machine state as ``forensics-<unix time>`` (about 0.1 s under
TCG) for a person to look at later. A failed snapshot does not undo the isolation: the outcome is
``ok`` with ``snapshot`` set to the reason it is missing. A link that could not be cut is a failure.

The link stays down until an operator restores it (a restart of the unit, which starts a new QEMU with
its link up, does too — so the default policy alerts and isolates, and never restarts such a unit).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

from enmei.errors import VisorError
from enmei.remedy.base import Remedy, Result, UnitControl
from enmei.remedy.registry import register
from enmei.visor.base import Capability, need, supports

__all__ = ["Isolate"]


@register
class Isolate(Remedy):
    name: ClassVar[str] = "isolate"
    description: ClassVar[str] = "cut the unit's network and keep a snapshot for forensics"
    arguments: ClassVar[Mapping[str, type | tuple[type, ...]]] = {"why": str, "snapshot": bool}
    needs: ClassVar[frozenset[Capability]] = frozenset({Capability.NET_LINK})

    def deadline_s(self, unit: UnitControl, args: Mapping[str, Any]) -> float:
        return 60.0

    async def run(self, unit: UnitControl, args: Mapping[str, Any]) -> Result:
        try:
            await need(unit.backend, Capability.NET_LINK, unit.name).set_link(unit.name, False)
        except VisorError as exc:
            return Result.failed(f"the network could not be cut: {exc.cause}")
        snapshot: str | None = None
        if args.get("snapshot", True) and supports(unit.backend, Capability.SNAPSHOT):
            tag = f"forensics-{int(time.time())}"
            try:
                await need(unit.backend, Capability.SNAPSHOT, unit.name).snapshot_save(unit.name, tag)
                snapshot = tag
            except VisorError as exc:
                return Result.ok(f"network cut; no forensic snapshot ({exc.cause})", isolated=True,
                                 snapshot=None, snapshot_error=exc.cause)
        what = f"; machine state kept as snapshot {snapshot}" if snapshot else ""
        return Result.ok(f"network cut{what}", isolated=True, snapshot=snapshot)

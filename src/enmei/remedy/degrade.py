"""Degrade: put a unit into a reduced mode it declares (``[units.NAME.degrade.MODE]``).

The mode is a command (run with the unit's working directory, ``timeout_s``, success = exit 0) or a
loopback URL (POST, success = 2xx). What "degraded" means is the service's business (read-only, no
expensive endpoints, a static page...); enmei only triggers it and records the answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

from enmei.clock import wait_for
from enmei.monitor.http import HttpError, http_get
from enmei.remedy.base import Remedy, Result, UnitControl

__all__ = ["Degrade"]


class Degrade(Remedy):
    name: ClassVar[str] = "degrade"
    description: ClassVar[str] = "switch the unit to a declared degraded mode (command or URL)"
    arguments: ClassVar[Mapping[str, type | tuple[type, ...]]] = {"mode": str, "why": str}

    def deadline_s(self, unit: UnitControl, args: Mapping[str, Any]) -> float:
        mode = unit.spec.degrade.get(str(args.get("mode", "")))
        return float(mode.timeout_s if mode else 10.0) + 5.0

    async def run(self, unit: UnitControl, args: Mapping[str, Any]) -> Result:
        modes = unit.spec.degrade
        name = str(args.get("mode") or (next(iter(modes)) if len(modes) == 1 else ""))
        mode = modes.get(name)
        if mode is None:
            known = ", ".join(sorted(modes)) or "none declared"
            return Result.failed(f"no degrade mode {name!r} for unit {unit.name} ({known})")
        if mode.url is not None:
            parts = urlsplit(mode.url)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            try:
                status, _ = await http_get(parts.hostname or "127.0.0.1", parts.port or 80, target,
                                           timeout_s=mode.timeout_s, method="POST")
            except (OSError, TimeoutError, HttpError) as exc:
                return Result.failed(f"degrade {name}: {exc or type(exc).__name__}", mode=name)
            if not 200 <= status < 300:
                return Result.failed(f"degrade {name}: status {status}", mode=name)
            return Result.ok(f"degraded ({name})", mode=name, status=status)
        assert mode.command is not None
        try:
            proc = await asyncio.create_subprocess_exec(
                *mode.command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT)
        except OSError as exc:
            return Result.failed(f"degrade {name}: {exc}", mode=name)
        try:
            out, _ = await wait_for(proc.communicate(), mode.timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return Result.failed(f"degrade {name}: command did not finish in {mode.timeout_s:g}s", mode=name)
        tail = out.decode(errors="replace").strip()[-300:]
        if proc.returncode != 0:
            return Result.failed(f"degrade {name}: exit code {proc.returncode}: {tail}", mode=name)
        return Result.ok(f"degraded ({name})", mode=name, output=tail)

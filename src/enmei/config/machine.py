"""Checks of a config against the machine (not the schema): commands that exist and run, directories.

``check_process_unit`` is the process backend's check, named in its declaration
(``enmei.visor.kinds``); ``enmei.config.load`` runs each unit's backend check and locates what it finds
(file, key, line). A check returns ``(key path under units.NAME, message)`` pairs and never raises for a
bad unit.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from enmei.config.model import ProcessUnit
from enmei.visor.identity import resolve

__all__ = ["check_process_unit", "resolve_command"]


def resolve_command(exe: str, cwd: Path, env: Mapping[str, str], inherit: bool) -> Path | None:
    """Where ``exe`` would be found when started in ``cwd`` with ``env`` (None: nowhere)."""
    if "/" in exe:
        p = Path(exe) if os.path.isabs(exe) else cwd / exe
        return p if p.exists() else None
    search = env.get("PATH") or (os.environ.get("PATH", os.defpath) if inherit else os.defpath)
    found = shutil.which(exe, path=search)
    return Path(found) if found else None


def check_process_unit(name: str, spec: Any, base_dir: Path) -> list[tuple[tuple[str, ...], str]]:
    """A process unit's ``cwd`` is a directory, its command exists and is executable, its ``pre_start`` and
    ``stop_command`` exist, and its ``user``, ``group`` and ``groups`` exist on this machine."""
    if not isinstance(spec, ProcessUnit):
        return []
    out: list[tuple[tuple[str, ...], str]] = []
    cwd = (base_dir / spec.cwd) if spec.cwd else base_dir
    if spec.cwd and not cwd.is_dir():
        out.append((("cwd",), f"{str(cwd)!r} is not a directory"))
    exe = spec.command[0]
    found = resolve_command(exe, cwd, spec.env, spec.inherit_env)
    if found is None:
        why = "does not exist" if "/" in exe else "is not on PATH"
        out.append((("command",), f"command {exe!r} {why}"))
    elif not os.access(found, os.X_OK) or found.is_dir():
        out.append((("command",), f"command {str(found)!r} is not executable"))
    helpers = [("pre_start", argv) for argv in spec.pre_start]
    if spec.stop_command:
        helpers.append(("stop_command", spec.stop_command))
    for key, argv in helpers:
        if resolve_command(argv[0], cwd, spec.env, spec.inherit_env) is None:
            why = "does not exist" if "/" in argv[0] else "is not on PATH"
            out.append(((key,), f"command {argv[0]!r} {why}"))
    try:
        resolve(spec.user, spec.group, spec.groups, spec.umask)
    except LookupError as exc:
        key, message = exc.args
        out.append(((key,), message))
    return out

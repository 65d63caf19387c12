"""Socket handover for process units: a new instance started beside the running one on the sockets enmei
holds (``enmei.visor.sockets``), made the unit's once ready, the old one then stopped gracefully.

The steps, each a call the remedy (``enmei.remedy.handover``) makes and journals:

1. ``begin`` — the old instance's output is set aside (captured under ``<unit>@old``, same files), a
   handover record is written (``<state>/handover/<unit>.json``: phase ``beside``, the old identity), the
   new instance is spawned in the unit's other cgroup slot (``CgroupTree.slots``) with the same held
   sockets, and recorded. The unit is still the old instance; the new one's end emits no event.
2. ``commit`` — the new instance becomes the unit's (``STARTED`` is emitted with ``handover: true``, the
   record's phase becomes ``swapped``), the old one is set aside (its end emits no event).
   A new command is kept for later starts (``<state>/handover/<unit>.command.json``, while the config's
   command for the unit stays the one it replaced: ``effective_spec``).
3. ``retire`` — the old one is stopped with the unit's stop signal and timeout (it drains); its cgroup is
   removed. ``abandon`` instead (the new one did not become ready): the new one is stopped, the old
   one's output is captured under the unit's name again, and the old instance stays the unit's.

The steps reach into the process backend (``enmei.visor.process``, typed ``Any`` here: it imports this
module) for its instances, capture and cgroups.

Crash-only: an enmei killed at any step leaves the record; the next one, adopting the unit
(``resolve_on_adopt``), keeps exactly one instance: the new one if the record says ``swapped`` and it is
alive (the old one is then sent its stop signal, and SIGKILL after ``stop_timeout_s``), else the old
one (any other main process of the unit — a new one not yet committed — is SIGKILLed with its group).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from enmei.clock import wait_for
from enmei.config.model import ProcessUnit
from enmei.errors import StartError
from enmei.fsafe import write_atomic
from enmei.model import UnitEvent, UnitEventKind
from enmei.visor.base import PROTOCOLS, Capability, Identity
from enmei.visor.cgroup import CgroupError

__all__ = ["Beside", "SocketHandover", "abandon", "begin", "command_path", "commit", "effective_spec", "end_now",
           "record_path", "remember_command", "resolve_on_adopt", "retire", "stop_later"]

log = logging.getLogger(__name__)


@runtime_checkable
class SocketHandover(Protocol):
    """``Capability.HANDOVER``: the steps of a handover (see the module docstring)."""

    async def handover_begin(self, name: str, spec: Any) -> Beside: ...

    def handover_commit(self, beside: Beside) -> None: ...

    async def handover_retire(self, beside: Beside, timeout_s: float) -> dict[str, Any]: ...

    async def handover_abandon(self, beside: Beside, timeout_s: float) -> dict[str, Any]: ...


PROTOCOLS[Capability.HANDOVER] = SocketHandover


def record_path(state_dir: Path, unit: str) -> Path:
    return state_dir / "handover" / f"{unit}.json"


def command_path(state_dir: Path, unit: str) -> Path:
    return state_dir / "handover" / f"{unit}.command.json"


def effective_spec(backend: Any, name: str, spec: ProcessUnit) -> ProcessUnit:
    """``spec`` with the command of the last successful update, if it replaced the command ``spec`` has
    (the config's: ``<state>/handover/<unit>.command.json``); a config whose command has changed since
    wins, and the record is dropped."""
    path = command_path(backend.state_dir, name)
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        replaced, command = list(body["config_command"]), list(body["command"])
    except FileNotFoundError:
        return spec
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("unit %s: the update record %s is unreadable: the config's command is used", name, path)
        return spec
    if list(spec.command) == command:
        return spec
    if list(spec.command) == replaced and command and all(isinstance(a, str) for a in command):
        return spec.model_copy(update={"command": command})
    with contextlib.suppress(OSError):
        path.unlink()  # the config names another command now: it is the truth again
    return spec


def remember_command(backend: Any, name: str, old: ProcessUnit, new: ProcessUnit) -> None:
    """After a swap to another command: keep it for later starts, also by a later enmei (``effective_spec``)."""
    if list(old.command) == list(new.command):
        return
    path = command_path(backend.state_dir, name)
    replaced = list(old.command)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        replaced = list(json.loads(path.read_text(encoding="utf-8"))["config_command"])
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"config_command": replaced, "command": list(new.command)}).encode(),
                 mode=0o600, what="update record")


def _write(backend: Any, unit: str, body: dict[str, Any]) -> None:
    path = record_path(backend.state_dir, unit)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, json.dumps(body).encode(), mode=0o600, what="handover record")


def _clear(backend: Any, unit: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        record_path(backend.state_dir, unit).unlink()


@dataclass
class Beside:
    """A handover under way: the unit's old instance and the new one beside it."""

    unit: str
    old: Any  # the process backend's instances (``_Running``)
    new: Any


async def begin(backend: Any, name: str, spec: ProcessUnit) -> Beside:
    """Start ``spec`` beside the unit's running instance on its held sockets. ``StartError`` (the old
    instance untouched and still the unit's) if the unit is not running, holds no sockets, or the new
    instance cannot be started."""
    old = backend._units.get(name)
    if old is None or old.done.done():
        raise StartError(name, "update", "not running: nothing to hand over from (start it instead)")
    if not spec.sockets:
        raise StartError(name, "update", "declares no [[sockets]]: a handover needs sockets enmei holds",
                         config_error=True)
    held = backend.held.get(name)
    if held is None or not held.fits(spec.sockets) or not held.held():
        raise StartError(name, "update", "its sockets are not all held by this enmei (changed in the config, "
                         "or not taken back from the adopted instance): restart it instead")
    cwd, env, run_as = await backend.prepare(name, spec)
    tree = backend.cgroups
    slot = None
    if tree is not None:
        try:
            slot = tree.other_slot(name, old.cgroup.path if old.cgroup is not None else None).path
        except CgroupError as exc:
            log.warning("unit %s: no cgroup for the new instance (%s): its stragglers are found by marks", name, exc)
    cgroup = await backend._end_leftovers(name, slot) if slot is not None else None
    slot = "b" if str(old.identity.extra.get("slot", "a")) == "a" else "a"
    # Limits in groups of the new instance's own: each of the two holds its own limits while they overlap.
    ucage = await backend.cage_for(name, spec, cgroup, slot)
    if backend._units.get(name) is not old or old.done.done():
        if ucage is not None:
            backend._release_later(name, None, ucage)
        raise StartError(name, "update", "the running instance ended while the new one was being prepared")
    _write(backend, name, {"phase": "beside", "old": old.identity.to_json(), "new": None})
    old.capture_key = f"{name}@old"
    backend.capture.rekey(name, old.capture_key)
    try:
        new = backend.launch(name, spec, cwd, env, run_as, cgroup, ucage, held, slot=slot)
    except BaseException:
        backend.capture.rekey(old.capture_key, name)
        old.capture_key = ""
        _clear(backend, name)
        raise
    new.retired = True  # not the unit's yet: its end is the handover's to tell
    beside = backend.beside[name] = Beside(name, old, new)
    backend._watch(name, new)
    _write(backend, name, {"phase": "beside", "old": old.identity.to_json(), "new": new.identity.to_json()})
    return beside


def commit(backend: Any, b: Beside) -> None:
    """Make the new instance the unit's (the old one goes on serving until ``retire``). Raises
    ``StartError`` (nothing changed) if the new one has ended."""
    if b.new.done.done():
        raise StartError(b.unit, "update", "the new instance ended before the swap")
    # Durable first: an enmei killed from here on adopts the new one.
    _write(backend, b.unit, {"phase": "swapped", "old": b.old.identity.to_json(), "new": b.new.identity.to_json()})
    remember_command(backend, b.unit, b.old.spec, b.new.spec)
    b.old.retired = True
    b.new.retired = False
    if backend._units.get(b.unit) is b.old:
        backend._units[b.unit] = b.new
    else:  # the old one ended meanwhile (its exit was the unit's): the new one is the unit now
        backend._units.setdefault(b.unit, b.new)
    backend.beside.pop(b.unit, None)
    started = {**b.new.started, "handover": True, "replaced_pid": b.old.identity.pid}
    backend.emit(UnitEvent(b.unit, UnitEventKind.STARTED, backend.clock.monotonic(), started))


async def retire(backend: Any, b: Beside, timeout_s: float) -> dict[str, Any]:
    """Stop the old instance gracefully (it drains), then forget the handover. Returns its end (code,
    signal, uptime) as ``_on_exit`` saw it; ``StopError`` if it survives SIGKILL."""
    try:
        await backend.stop_instance(b.old, timeout_s)
    finally:
        _clear(backend, b.unit)
    if b.old.cgroup is not None and (b.new.cgroup is None or b.old.cgroup.path != b.new.cgroup.path):
        with contextlib.suppress(CgroupError):
            b.old.cgroup.remove()
    return dict(b.old.done.result()) if b.old.done.done() else {}


async def abandon(backend: Any, b: Beside, timeout_s: float) -> dict[str, Any]:
    """The new instance did not become ready: stop it (if it still runs), capture the old one's output under
    the unit's name again, forget the handover. The old instance stays the unit's."""
    try:
        if not b.new.done.done():
            await backend.stop_instance(b.new, timeout_s)
    finally:
        backend.beside.pop(b.unit, None)
        if b.old.capture_key:
            backend.capture.rekey(b.old.capture_key, b.unit)
            b.old.capture_key = ""
        _clear(backend, b.unit)
    if b.new.cgroup is not None and (b.old.cgroup is None or b.old.cgroup.path != b.new.cgroup.path):
        with contextlib.suppress(CgroupError):
            b.new.cgroup.remove()
    return dict(b.new.done.result()) if b.new.done.done() else {}


def _alive(ident: Identity | None) -> bool:
    if ident is None:
        return False
    import psutil

    try:
        return abs(psutil.Process(ident.pid).create_time() - ident.create_time) <= 0.05 and \
            psutil.Process(ident.pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def resolve_on_adopt(backend: Any, name: str, spec: ProcessUnit, identity: Identity
                     ) -> tuple[Identity, list[Identity], Identity | None, dict[str, Any]]:
    """For the adoption of ``name`` with its saved ``identity``: (the identity to adopt, instances to end at
    once, an instance to stop gracefully, what the record said). Without a handover record: the saved
    identity, nothing to end."""
    path = record_path(backend.state_dir, name)
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return identity, [], None, {}
    _clear(backend, name)
    try:
        old = Identity.from_json(body["old"]) if body.get("old") else None
        new = Identity.from_json(body["new"]) if body.get("new") else None
    except (KeyError, TypeError, ValueError):
        log.warning("unit %s: the handover record %s is unreadable: ignored", name, path)
        return identity, [], None, {"phase": "unreadable"}
    phase = body.get("phase")
    seen = {"phase": phase, "old_pid": old.pid if old else None, "new_pid": new.pid if new else None}
    if phase == "swapped" and _alive(new):
        assert new is not None
        return new, [], old if _alive(old) else None, seen
    # Not swapped (or the new one is gone): the old instance stays; whatever else runs as the unit's
    # main process (a new one spawned before it was recorded) is ended.
    others = [Identity(unit=name, backend=backend.kind, pid=pid, create_time=ct, started_wall=ct)
              for pid, ct in backend._find_marked(name) if pid != identity.pid]
    return identity, others, None, seen


def end_now(ident: Identity) -> None:
    """SIGKILL the process group of ``ident`` if it is still that process."""
    if _alive(ident):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(ident.pid, signal.SIGKILL)


async def stop_later(ident: Identity, sig: signal.Signals, timeout_s: float) -> None:
    """``sig`` to the group of ``ident`` (it drains), then SIGKILL to it after ``timeout_s`` if still there."""
    if not _alive(ident):
        return
    try:
        pidfd = os.pidfd_open(ident.pid)
    except OSError:
        return
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()

    def ended() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(pidfd, ended)
    try:
        if _alive(ident):  # the pidfd pins the process checked here
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(ident.pid, sig)
            with contextlib.suppress(TimeoutError):
                await wait_for(gone, timeout_s)
            if not gone.done():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(ident.pid, signal.SIGKILL)
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)

"""``handover``: update (or restart) a process unit with no refused connection — the new version is started
beside the old one on the sockets enmei holds, and the old one is stopped only once the new one is ready.

Steps, each journaled as it happens (a ``remedy.step`` record with the remedy's id, the ``step`` and the
seconds since the handover began, ``t_s``), and all of them in the outcome's data:

1. ``new_started`` — the new instance runs beside the old one (``enmei.visor.handover.begin``), with the
   same held sockets (``LISTEN_FDS``); both accept from the same queue.
2. ``new_ready`` — its readiness: ``READY=1`` on a notify socket of its own when the unit has
   ``startup_notify`` (within ``startup_timeout_s``), and in any case still up ``start_s`` after its start.
   (A ``startup_probe`` or ``startup_log`` cannot tell the two instances apart: with those, readiness is
   the new instance staying up ``start_s``.)
3. ``swapped`` — the new instance is the unit's (``STARTED`` with ``handover: true``).
4. ``old_stopped`` — the old one got the unit's ``stop_signal`` and drained, within ``stop_timeout_s``
   (then SIGKILL, as any stop).

A new version that ends or is not ready in time is stopped and the old one keeps serving: step
``rolled_back``, outcome FAILED ("update rolled back: ..."). With ``command`` (a list, or a string split
like a shell), the new instance runs that command, and after a successful handover the unit's command is
the new one for every later start, also by a restarted enmei, while the config's command for the unit is
the one it replaced (``enmei.visor.handover.effective_spec``); a config that names another command wins.

Also the ``restart`` of a running unit with ``restart_mode = "handover"`` (``handover_restart``), and so
``rejuvenate``'s: a rejuvenation with no refused connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import Mapping
from typing import Any, ClassVar, cast

from enmei.clock import within
from enmei.errors import EnmeiError, StartError, StopError
from enmei.model import UnitEvent, UnitEventKind
from enmei.monitor.startup import NotifySocket, belongs_to
from enmei.remedy.base import Remedy, Result, UnitControl
from enmei.visor.base import Capability
from enmei.visor.handover import Beside, SocketHandover

__all__ = ["Handover", "handover_restart", "parse_command", "wants_handover"]


def parse_command(value: Any) -> list[str] | None:
    """The ``command`` argument as an argv (None: not given); ``ValueError`` saying what it must be.

    >>> parse_command("server --port 1")
    ['server', '--port', '1']
    """
    if value is None:
        return None
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"command {value!r}: {exc}") from None
    elif isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value):
        argv = list(value)
    else:
        raise ValueError("command must be a string or a list of strings")
    if not argv or not argv[0]:
        raise ValueError("command is empty")
    if len(argv) > 256 or any(len(a) > 4096 or "\0" in a for a in argv):
        raise ValueError("command: at most 256 arguments of at most 4096 characters, no NUL")
    return argv


def wants_handover(unit: UnitControl) -> bool:
    """Whether a restart of ``unit`` is done by handover: ``restart_mode = "handover"``, running, and a
    backend that can."""
    return (getattr(unit.spec, "restart_mode", "plain") == "handover" and unit.alive()
            and Capability.HANDOVER in unit.backend.capabilities)


class _Steps:
    """The handover's steps: journaled at once (a ``remedy.step`` record of the running remedy; a
    ``HANDOVER`` unit event where the unit has no journal of its own), kept for the outcome."""

    def __init__(self, unit: UnitControl, kind: str) -> None:
        self.unit = unit
        self.kind = kind
        self.t0 = unit.clock.monotonic()
        self.done: list[dict[str, Any]] = []
        # The remedy these steps belong to, as it is now: a step journaled after a pre-emption (the
        # rollback of a cancelled handover) must not be counted to the operator's command that follows.
        run = getattr(unit, "remedy", None)
        self.owner = {"action": run.action, "remedy_id": run.remedy_id} if run is not None else {}

    def __call__(self, step: str, **detail: Any) -> None:
        entry = {"step": step, "t_s": round(self.unit.clock.monotonic() - self.t0, 4), **detail}
        self.done.append(entry)
        record = getattr(self.unit, "journal_step", None)  # the engine's units: a remedy.step record
        if callable(record):
            record(step, {"kind": self.kind, **{k: v for k, v in entry.items() if k != "step"}, **self.owner})
        else:
            self.unit.backend.emit(UnitEvent(self.unit.name, UnitEventKind.HANDOVER, self.unit.clock.monotonic(),
                                             {"kind": self.kind, **entry}))

    def at(self, step: str) -> float | None:
        return next((float(e["t_s"]) for e in self.done if e["step"] == step), None)


async def _ready(unit: UnitControl, spec: Any, beside: Beside, notify: NotifySocket | None,
                 readiness: asyncio.Event) -> str | None:
    """Wait for the new instance's readiness (see the module docstring); None once ready, else why not."""
    new = beside.new
    clock = unit.clock
    started = new.started_mono
    if notify is not None:
        notify.recheck()
        waiting: asyncio.Future[Any] = asyncio.ensure_future(readiness.wait())
        either: set[asyncio.Future[Any]] = {waiting, asyncio.shield(new.done)}
        try:
            with contextlib.suppress(TimeoutError):
                await within(clock, asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED),
                             float(spec.startup_timeout_s))
        finally:
            waiting.cancel()
        if new.done.done():
            return f"the new instance ended before it was ready ({_ended(new.done.result())})"
        if not readiness.is_set():
            return f"no READY=1 from the new instance within {float(spec.startup_timeout_s):g}s"
    left = float(spec.start_s) - (clock.monotonic() - started)
    if left > 0:
        with contextlib.suppress(TimeoutError):
            await within(clock, asyncio.shield(new.done), left)
    if new.done.done():
        return f"the new instance ended within start_s = {float(spec.start_s):g}s ({_ended(new.done.result())})"
    return None


def _ended(detail: Mapping[str, Any]) -> str:
    if detail.get("signal"):
        return f"signal {detail['signal']}"
    return f"exit code {detail.get('code')}"


async def run_handover(unit: UnitControl, command: list[str] | None, kind: str) -> Result:
    """The handover itself (see the module docstring), for ``handover`` and ``handover_restart``."""
    if Capability.HANDOVER not in unit.backend.capabilities:
        return Result.failed(f"the {unit.backend.kind} backend cannot hand over sockets")
    backend = cast(SocketHandover, unit.backend)
    spec = unit.spec
    if not unit.alive():
        return Result.failed("not running: nothing to hand over from (start it instead)")
    new_spec = spec.model_copy(update={"command": command}) if command else spec
    steps = _Steps(unit, kind)
    readiness = asyncio.Event()
    notify: NotifySocket | None = None
    holder: dict[str, Beside] = {}
    if spec.startup_notify:
        def accept(pid: int) -> bool | None:
            b = holder.get("b")
            if b is None:
                return None
            cg = b.new.identity.extra.get("cgroup")
            return belongs_to(pid, b.new.identity.pid, cg if isinstance(cg, str) else None)

        notify_dir = unit.backend.state_dir / "notify"
        try:
            notify = NotifySocket(notify_dir, f"{unit.name}@new", accept=accept,
                                  on_ready=lambda pid: readiness.set(), on_refused=lambda pid: None)
        except OSError as exc:
            return Result.failed(f"cannot make the new instance's notify socket: {exc}")
        notify.start()
        new_spec = new_spec.model_copy(update={"env": {**new_spec.env, "NOTIFY_SOCKET": notify.address}})
    try:
        try:
            beside = await backend.handover_begin(unit.name, new_spec)
        except StartError as exc:
            steps("rolled_back", cause=f"the new instance did not start: {exc.cause}")
            return Result.failed(f"update rolled back: the new instance did not start: {exc.cause}",
                                 steps=steps.done)
        holder["b"] = beside
        steps("new_started", pid=beside.new.identity.pid, command=list(new_spec.command),
              old_pid=beside.old.identity.pid)
        try:
            why = await _ready(unit, spec, beside, notify, readiness)
        except asyncio.CancelledError:
            # Pre-empted (an operator's stop, the deadline): the new instance is not left running beside.
            steps("rolled_back", cause="cancelled before the swap", new_pid=beside.new.identity.pid,
                  serving_pid=beside.old.identity.pid)
            await asyncio.shield(backend.handover_abandon(beside, float(spec.stop_timeout_s)))
            raise
        if why is None:
            try:
                backend.handover_commit(beside)
            except StartError as exc:
                why = exc.cause
        if why is not None:
            ended = await backend.handover_abandon(beside, float(spec.stop_timeout_s))
            steps("rolled_back", cause=why, new_pid=beside.new.identity.pid, new_end=ended,
                  serving_pid=beside.old.identity.pid)
            return Result.failed(f"update rolled back: {why}; pid {beside.old.identity.pid} serves on",
                                 steps=steps.done)
        steps("new_ready", pid=beside.new.identity.pid)
        steps("swapped", pid=beside.new.identity.pid)
        if command:
            respec = getattr(unit, "respec", None)
            if callable(respec):
                respec(new_spec.model_copy(update={"env": spec.env}))
        try:
            ended = await backend.handover_retire(beside, float(spec.stop_timeout_s))
        except StopError as exc:
            steps("old_stop_failed", pid=beside.old.identity.pid, cause=exc.cause)
            return Result.failed(f"the new instance serves, but the old one did not stop: {exc.cause}",
                                 steps=steps.done)
        steps("old_stopped", pid=beside.old.identity.pid, code=ended.get("code"), signal=ended.get("signal"))
    except EnmeiError:
        raise
    finally:
        if notify is not None:
            notify.close()
    ready_at, stopped_at = steps.at("new_ready"), steps.at("old_stopped")
    return Result.ok(f"handed over from pid {beside.old.identity.pid} to pid {beside.new.identity.pid} "
                     f"(ready after {ready_at:.2f}s, old stopped after {stopped_at:.2f}s)",
                     steps=steps.done, pid=beside.new.identity.pid, old_pid=beside.old.identity.pid,
                     ready_s=ready_at, total_s=stopped_at, downtime_s=0.0)


class Handover(Remedy):
    name: ClassVar[str] = "handover"
    description: ClassVar[str] = ("update a process unit with no refused connection: start the new version beside "
                                  "the old on its held sockets, stop the old once the new is ready; roll back "
                                  "if it is not")
    arguments: ClassVar[Mapping[str, type | tuple[type, ...]]] = {"command": (str, list), "why": str}
    needs: ClassVar[frozenset[Capability]] = frozenset({Capability.HANDOVER})
    counts_as_restart: ClassVar[bool] = False  # an update, not a repair: the old instance serves throughout

    @classmethod
    def check_args(cls, args: Mapping[str, Any]) -> str | None:
        problem = super().check_args(args)
        if problem is None and "command" in args:
            try:
                parse_command(args["command"])
            except ValueError as exc:
                return f"remedy 'handover': {exc}"
        return problem

    def deadline_s(self, unit: UnitControl, args: Mapping[str, Any]) -> float:
        spec = unit.spec
        return float(spec.start_bound_s() + 2 * spec.stop_bound_s() + spec.restart.deadline_s)

    async def run(self, unit: UnitControl, args: Mapping[str, Any]) -> Result:
        try:
            command = parse_command(args.get("command"))
        except ValueError as exc:
            return Result.failed(str(exc))
        return await run_handover(unit, command, "update")


async def handover_restart(unit: UnitControl) -> Result:
    """A restart by handover (``restart_mode = "handover"``): the same command, no refused connection."""
    return await run_handover(unit, None, "restart")

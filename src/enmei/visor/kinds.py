"""The built-in backends, declared: one registration line each (see ``enmei.visor.registry``).

Light on purpose: it imports no backend. The process backend's module is imported when the first
process backend is made, QEMU's (and ``qemu.qmp``) only when a VM unit exists.
"""

from __future__ import annotations

from enmei.visor.base import Backend, Capability
from enmei.visor.registry import BackendContext, BackendKind, register_backend

__all__ = ["PROCESS", "QEMU"]


def _process(ctx: BackendContext) -> Backend:
    from enmei.visor.process import ProcessBackend

    return ProcessBackend(clock=ctx.clock, state_dir=ctx.state_dir, emit=ctx.emit, base_dir=ctx.base_dir)


def _qemu(ctx: BackendContext) -> Backend:
    from enmei.visor.qemu import QemuBackend  # heavy and optional: only when a VM unit exists

    backend: Backend = QemuBackend(clock=ctx.clock, state_dir=ctx.state_dir, emit=ctx.emit, verdict=ctx.verdict)
    return backend


PROCESS = register_backend(BackendKind(
    "process", "enmei.config.model:ProcessUnit", _process,
    frozenset({Capability.STATS, Capability.LOGS, Capability.HANDOVER}), "any command, in its own session",
    check="enmei.config.machine:check_process_unit"))
QEMU = register_backend(BackendKind(
    "qemu", "enmei.config.qemu:QemuUnit", _qemu, frozenset(Capability) - {Capability.HANDOVER},
    "a QEMU virtual machine over QMP"))

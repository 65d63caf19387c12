"""Exec probe (``kind = "exec"``): a command's exit code says whether the unit is well.

Monit's ``check program`` and Kubernetes' exec probe: ``redis-cli PING``, ``pg_isready``. The command is
run without a shell, in its own session; it gets ``timeout_s``, after which its whole session is
SIGKILLed (and reaped). stdout and stderr together are read up to ``max_output`` bytes (the rest is
read and dropped, so the command never blocks on a full pipe). It runs in the supervisor's helper cage
(``enmei.visor.cage``: a CPU weight and pids limit of its own, never the unit's ``cpu_max``/``pids_max``)
and, where the cage has no cgroup v2 group (this hybrid layout), in the unit's v2 cgroup, so that
stopping the unit ends it too.

Evidence: values ``exit_code`` and ``run_s``; the output's lines (at most 20, each cut to 512 bytes)
on the observation's text channel, and its last line in ``error`` when it fails. A command that cannot
be started (not found, not executable) is a failed observation naming why, not an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import replace
from pathlib import Path

from enmei.clock import Clock
from enmei.config.model import ExecProbe as ExecProbeConfig
from enmei.config.model import ProcessUnit
from enmei.model import Observation
from enmei.monitor.base import Probe
from enmei.monitor.registry import ProbeSite, register
from enmei.visor.base import Backend
from enmei.visor.cage import caged_argv

__all__ = ["ExecProbe"]

_MAX_LINES = 20
_MAX_LINE = 512


class ExecProbe(Probe):
    """Run ``command``; ok when it exits with a code in ``expect_exit`` within ``timeout_s``."""

    timed = True

    def __init__(self, unit: str, name: str, interval_s: float, clock: Clock, *, command: list[str],
                 timeout_s: float, expect_exit: list[int], max_output: int = 4096,
                 backend: Backend | None = None, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        super().__init__(unit, name, interval_s, clock)
        self.command = list(command)
        self.timeout_s = timeout_s
        self.expect_exit = frozenset(expect_exit)
        self.max_output = max_output
        self.backend = backend
        self.cwd = cwd
        self.env = env

    def _cgroup_procs(self) -> Path | None:
        """The unit's cgroup.procs, if the unit runs in a cgroup now."""
        if self.backend is None:
            return None
        ident = self.backend.identity(self.unit)
        path = ident.extra.get("cgroup") if ident is not None else None
        procs = Path(path) / "cgroup.procs" if isinstance(path, str) else None
        return procs if procs is not None and procs.exists() else None

    async def observe(self) -> Observation:
        t0 = self.clock.monotonic()
        # The helper cage (its CPU weight and pids limit, not the unit's cpu_max/pids_max: a probe of a
        # unit at its limits still runs); tracked in the unit's v2 cgroup where the cage has none there.
        argv = caged_argv(self.command, tracking=self._cgroup_procs())
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, cwd=self.cwd, env=self.env, start_new_session=True)
        except OSError as exc:
            return self._obs(False, {}, f"cannot run {self.command[0]!r}: {exc.strerror or exc}", t0)
        out = bytearray()
        try:
            async with asyncio.timeout(self.timeout_s):
                assert proc.stdout is not None
                while chunk := await proc.stdout.read(65536):
                    if len(out) < self.max_output:
                        out += chunk[:self.max_output - len(out)]
                code = await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            obs = self._obs(False, {"run_s": self.clock.monotonic() - t0},
                            f"{self.command[0]} did not finish within {self.timeout_s:g}s (killed)", t0)
            return self._with_output(obs, bytes(out))
        except BaseException:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.shield(proc.wait())
            raise
        values = {"exit_code": float(code), "run_s": self.clock.monotonic() - t0}
        ok = code in self.expect_exit
        error = None
        if not ok:
            last = _lines(bytes(out))[-1:] or ["no output"]
            error = f"{self.command[0]} exited {code}: {last[0]}"
        return self._with_output(self._obs(ok, values, error, t0), bytes(out))

    def _with_output(self, obs: Observation, out: bytes) -> Observation:
        lines = _lines(out)
        return replace(obs, lines=tuple(lines)) if lines else obs


def _lines(out: bytes) -> list[str]:
    return [line[:_MAX_LINE].decode("utf-8", "replace") for line in out.splitlines()[:_MAX_LINES] if line.strip()]


def _make(site: ProbeSite, cfg: ExecProbeConfig) -> ExecProbe:
    cwd: Path | None = None
    env: dict[str, str] | None = None
    spec = site.spec
    if isinstance(spec, ProcessUnit):
        base = getattr(site.backend, "base_dir", None)
        base_dir = base if isinstance(base, Path) else Path.cwd()
        cwd = (base_dir / spec.cwd).resolve() if spec.cwd else base_dir
        env = {**(dict(os.environ) if spec.inherit_env else {}), **spec.env}
    return ExecProbe(site.unit, site.name, cfg.interval_s, site.clock, command=cfg.command, timeout_s=cfg.timeout_s,
                     expect_exit=cfg.expect_exit, max_output=cfg.max_output_bytes, backend=site.backend, cwd=cwd,
                     env=env)


register(ExecProbeConfig, _make)

"""Where a policy runs: in a sandbox process (the supervisor's choice) or in this process (tools, tests).

Both load a ``ProgramSpec`` under ``Limits`` and answer ``call(payload) -> result JSON``, raising
``PolicyFailure`` (a ``PolicyError`` with a ``kind``: syntax, load, runtime, steps, time, memory, panic,
result, decision, crash) when the policy does not load or an evaluation fails.

``WorkerSandbox`` runs ``enmei/policy/core.py`` as its own process, whose address space is capped at its
size after start-up plus ``memory_mib`` (``RLIMIT_AS``): an allocation past that fails inside the sandbox
process, which reports it or dies, and the supervisor only reads a closed pipe. An evaluation that does
not answer within ``kill_after_s`` (the step and time limits stop ordinary loops much sooner) gets the
process killed. Either way the next call starts a fresh process with the same policy, so a policy that
blows up once does not stop the ones after it. A round trip costs a few tens of microseconds.

``InProcessSandbox`` enforces the same step, time and stack limits, but memory only by sampling: one
instruction that allocates gigabytes is not stopped. Use it where the policy is trusted or a crash costs
nothing (unit tests, ``enmei policy check``).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from enmei.policy import core
from enmei.policy.core import HEADER, EvalFailure, Limits, Program
from enmei.policy.encode import DRIVER
from enmei.policy.failure import PolicyFailure, failure_error
from enmei.policy.program import ProgramSpec
from enmei.visor.cage import caged_argv, current_cage_owner, enter_cage

__all__ = ["InProcessSandbox", "Sandbox", "SandboxFactory", "WorkerSandbox"]

CORE_PATH = Path(core.__file__)


class Sandbox(Protocol):
    kind: str
    handlers: list[str]
    history_s: float | None  # the policy's HISTORY_S: how far back its history queries look

    def call(self, payload: str) -> str:
        """The handler's result as JSON text; raises ``PolicyFailure``."""

    def close(self) -> None: ...


SandboxFactory = Callable[[ProgramSpec, Limits], Sandbox]


class InProcessSandbox:
    """The policy in this process (see the module docstring for what that does not protect against)."""

    kind = "in-process"

    def __init__(self, spec: ProgramSpec, limits: Limits) -> None:
        try:
            request = spec.load_request(limits.as_dict())
            self.program = Program(spec.sources, spec.filenames, DRIVER, limits, request["remedies"])
        except EvalFailure as failure:
            raise failure_error(failure, spec.filenames["policy"]) from None
        self.file = spec.filenames["policy"]
        self.handlers = self.program.handlers
        self.history_s = self.program.history_s

    def call(self, payload: str) -> str:
        try:
            return self.program.call(payload)
        except EvalFailure as failure:
            raise failure_error(failure, self.file) from None

    def close(self) -> None:
        pass


class _Gone(Exception):
    pass


def _reap(proc: subprocess.Popen[bytes]) -> None:
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    if proc.poll() is None:
        try:
            proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


class WorkerSandbox:
    """The policy in a sandbox process of its own (see the module docstring)."""

    kind = "process"

    def __init__(self, spec: ProgramSpec, limits: Limits, *, kill_after_s: float | None = None,
                 load_timeout_s: float = 10.0, python: str = sys.executable) -> None:
        self.spec = spec
        self.file = spec.filenames["policy"]
        self.limits = limits
        self.kill_after_s = kill_after_s if kill_after_s is not None else 2 * limits.time_s + 1.0
        self.load_timeout_s = load_timeout_s
        self.python = python
        self.restarts = 0
        self._request = json.dumps(spec.load_request(limits.as_dict())).encode()
        self._proc: subprocess.Popen[bytes] | None = None
        self._caged = False  # in the helper cage (or there is none to join)
        self._finalizer: Any = None  # weakref.finalize: reaps the process if the sandbox is dropped
        self._buf = bytearray()
        self._poll = select.poll()
        self._errtail = b""
        self.history_s: float | None = None
        self.handlers: list[str] = self._start()

    # -- process -----------------------------------------------------------------------------------

    def _start(self) -> list[str]:
        env = {**os.environ, "RUST_BACKTRACE": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            # -P: the policy package's own directory must not shadow the standard library.
            # In the supervisor's helper cage (enmei.visor.cage) where there is one: a policy spinning up
            # to its time limit takes CPU from neither the units nor the engine's loop.
            proc = subprocess.Popen(caged_argv([self.python, "-P", str(CORE_PATH), "--serve"]),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                    bufsize=0, start_new_session=True)
        except OSError as exc:
            raise PolicyFailure("crash", f"cannot start the sandbox process: {exc}") from exc
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        os.set_blocking(proc.stderr.fileno(), False)
        self._proc = proc
        self._caged = current_cage_owner() is not None
        self._finalizer = weakref.finalize(self, _reap, proc)
        self._buf.clear()
        self._errtail = b""
        self._poll = select.poll()
        self._poll.register(proc.stdout.fileno(), select.POLLIN)
        kind, body = self._exchange(core.LOAD, self._request, self.load_timeout_s)
        if kind == core.OK:
            info = json.loads(body)
            self.history_s = info.get("history_s")
            handlers: list[str] = info["handlers"]
            return handlers
        self._stop()
        raise self._error(body)

    def _stop(self, *, kill: bool = False) -> None:
        proc = self._proc
        if kill and proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)  # it is busy, not reading: closing its input would not stop it
        if self._finalizer is not None:
            self._finalizer()
        self._proc = None
        self._finalizer = None

    def close(self) -> None:
        """End the sandbox process (closing its input; killed if it does not end within a second)."""
        self._stop()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- frames ------------------------------------------------------------------------------------

    def _exchange(self, kind: int, body: bytes, timeout_s: float) -> tuple[int, bytes]:
        proc = self._proc
        assert proc is not None
        if not self._caged:
            # Started before the supervisor's backends made the helper cage (the policy is opened
            # first): it joins as soon as there is one.
            self._caged = enter_cage(proc.pid)
        assert proc.stdin is not None
        assert proc.stdout is not None
        data = HEADER.pack(len(body), kind) + body
        deadline = time.monotonic() + timeout_s
        try:
            fd = proc.stdin.fileno()
            while data:
                data = data[os.write(fd, data):]
            head = self._read(proc.stdout.fileno(), HEADER.size, deadline)
            size, reply = HEADER.unpack(head)
            return reply, self._read(proc.stdout.fileno(), size, deadline)
        except TimeoutError:
            self._stop(kill=True)
            raise PolicyFailure("time", f"no answer within {timeout_s:g}s; the sandbox process was killed "
                                        "(the policy will be loaded again for the next evaluation)",
                                file=self.file) from None
        except (_Gone, OSError):
            raise self._death() from None

    def _read(self, fd: int, n: int, deadline: float) -> bytes:
        buf = self._buf
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not self._poll.poll(max(1, int(left * 1000))):
                raise TimeoutError
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise _Gone
            buf += chunk
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def _stderr(self) -> str:
        proc = self._proc
        if proc is not None and proc.stderr is not None:
            with contextlib.suppress(OSError, TypeError):
                while chunk := proc.stderr.read(1 << 16):
                    self._errtail = (self._errtail + chunk)[-2048:]
        return self._errtail.decode(errors="replace")

    def _death(self) -> PolicyFailure:
        proc = self._proc
        code: int | None = None
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = proc.wait(timeout=2.0)
        tail = self._stderr()
        self._stop()
        lines = [ln.strip() for ln in tail.splitlines() if ln.strip() and "RUST_BACKTRACE" not in ln]
        last = next((ln for ln in lines if "memory" in ln), lines[-1] if lines else "")
        if "memory allocation" in tail or "out of memory" in tail or code == -signal.SIGABRT:
            return PolicyFailure("memory", f"the evaluation ran out of memory (limit {self.limits.memory_mib} MiB)"
                                           f" and the sandbox process ended{': ' + last if last else ''}",
                                 file=self.file)
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return PolicyFailure("crash", f"the sandbox process ended ({how}){': ' + last if last else ''}",
                             file=self.file)

    def _error(self, body: bytes) -> PolicyFailure:
        failure = EvalFailure.from_dict(json.loads(body))
        self._stderr()  # keep the pipe drained (panics write there)
        err = failure_error(failure, self.file)
        assert isinstance(err, PolicyFailure)
        return err

    # -- calls -------------------------------------------------------------------------------------

    def call(self, payload: str) -> str:
        if self._proc is None:
            self.restarts += 1
            self._start()
        kind, body = self._exchange(core.CALL, payload.encode(), self.kill_after_s)
        if kind == core.RESULT:
            return body.decode()
        raise self._error(body)

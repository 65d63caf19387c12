"""The Starlark evaluator under limits, shared by both sandboxes.

``Program`` builds a policy from its module sources (the policy file, the ``@enmei`` API and the
shipped library modules it loads, and the generated driver) and calls the driver's ``dispatch`` with a
JSON payload, returning the handler's result as JSON text. Each evaluation, including the top-level code
of every module while it loads, runs under ``Limits``: at most ``max_steps`` bytecode instructions (the
interpreter asks about every 1,000 instructions), ``time_s`` seconds, ``max_callstack`` frames, a result of
at most ``max_result_bytes``; memory is sampled (resident set) on the same checks. A failure is an
``EvalFailure`` with a kind (syntax, load, runtime, steps, time, memory, panic, result) and, where the
interpreter names one, file:line:column.

Sampling cannot stop one instruction that allocates gigabytes (``[0] * (1 << 30)``): only the sandbox
process can. This file is therefore also the sandbox process's main program: ``python core.py --serve``
caps its own address space (``RLIMIT_AS``) and serves length-prefixed frames on stdin/stdout (see
``serve``). It imports nothing from enmei, so the sandbox process never loads the supervisor's code.
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import starlark as sl

__all__ = ["HANDLERS", "EvalFailure", "Limits", "Program", "dialect", "located", "rss_bytes", "serve"]

#: the handlers a policy may define, in the order the payload numbers them
HANDLERS = ("on_exit", "on_event", "on_verdict", "on_outcome", "on_tick")

_LOCATION = re.compile(r"-->\s+(.*):(\d+):(\d+)\s*$", re.MULTILINE)
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class Limits:
    """What one evaluation may use. ``memory_mib`` is enforced exactly only in the sandbox process."""

    max_steps: int = 2_000_000  # bytecode instructions, checked every ~1,000
    time_s: float = 0.25
    memory_mib: int = 256  # growth of the evaluator's memory over its size after loading
    max_callstack: int = 64
    max_result_bytes: int = 65_536

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EvalFailure(Exception):
    """An evaluation failed. ``kind`` says how; file/line/column locate it when the interpreter can."""

    def __init__(self, kind: str, message: str, *, file: str | None = None, line: int | None = None,
                 column: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.file = file
        self.line = line
        self.column = column

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "file": self.file, "line": self.line,
                "column": self.column}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalFailure:
        return cls(str(d.get("kind", "runtime")), str(d.get("message", "")), file=d.get("file"),
                   line=d.get("line"), column=d.get("column"))


def rss_bytes() -> int:
    """This process's resident set size (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def dialect() -> sl.Dialect:
    d = sl.Dialect.extended()
    d.enable_f_strings = True
    return d


def _globals() -> sl.Globals:
    # No print, debug or breakpoint: a policy has no way to reach the outside world.
    ext = sl.LibraryExtension
    return sl.Globals.extended_by([ext.Json, ext.StructType, ext.Map, ext.Filter, ext.Partial])


class _Guard:
    """The check_cancelled callback: counts, times and samples memory; remembers why it stopped."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.max_checks = max(1, limits.max_steps // 1000)
        self.checks = 0
        self.deadline = 0.0
        self.rss_limit = 0
        self.memory = limits.memory_mib * 2**20
        self.reason: str | None = None
        self.options = sl.EvalOptions(check_cancelled=self.check, max_callstack_size=limits.max_callstack)

    def arm(self) -> None:
        self.checks = 0
        self.reason = None
        self.deadline = time.monotonic() + self.limits.time_s

    def check(self) -> bool:
        checks = self.checks = self.checks + 1
        if checks > self.max_checks:
            self.reason = "steps"
        elif time.monotonic() > self.deadline:
            self.reason = "time"
        elif checks % 8 == 1:
            # Growth since this evaluation's first check (short evaluations never pay for a sample).
            rss = rss_bytes()
            if checks == 1:
                self.rss_limit = rss + self.memory
            elif rss > self.rss_limit:
                self.reason = "memory"
        return self.reason is not None

    def failure(self) -> EvalFailure:
        lim = self.limits
        text = {
            "steps": f"stopped after {lim.max_steps:,} steps (an endless loop?)",
            "time": f"stopped after {lim.time_s:g}s (the time limit)",
            "memory": f"stopped: memory grew past the {lim.memory_mib} MiB limit",
        }[self.reason or "time"]
        return EvalFailure(self.reason or "time", text)


def located(kind: str, exc: BaseException) -> EvalFailure:
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines()]
    message = next((ln[len("error:"):].strip() for ln in lines if ln.startswith("error:")), None)
    if message is None:
        message = next((ln for ln in lines if ln), type(exc).__name__)
    if message.startswith("Parse error:") or "dialect" in message:
        kind = "syntax"
    m = _LOCATION.search(text)
    if m is None:
        return EvalFailure(kind, message)
    return EvalFailure(kind, message, file=m.group(1), line=int(m.group(2)), column=int(m.group(3)))


def _panic(exc: BaseException) -> EvalFailure:
    kind = "memory" if "out of memory" in str(exc) else "panic"
    return EvalFailure(kind, f"the interpreter failed: {exc}")


class Program:
    """A policy loaded into this process: its modules evaluated and frozen, its handlers found.

    ``remedies`` (backend kind -> actions, "*" for others) becomes ``ctx.remedies``. ``sources`` maps each
    loadable name
    ``filenames`` to the name errors show. ``driver`` is evaluated last; it loads the handlers from
    ``policy`` and defines ``dispatch(payload)``. Raises ``EvalFailure`` when anything does not load.
    """

    def __init__(self, sources: Mapping[str, str], filenames: Mapping[str, str], driver_template: str,
                 limits: Limits, remedies: Mapping[str, list[str]]) -> None:
        self.sources = dict(sources)
        self.filenames = dict(filenames)
        self.limits = limits
        self.guard = _Guard(limits)
        self._dialect = dialect()
        self._globals = _globals()
        self._frozen: dict[str, sl.FrozenModule] = {}
        self._loading: list[str] = []
        self._load_failure: EvalFailure | None = None
        self._loader = sl.FileLoader(self._load)
        self._frozen_module("policy")
        self.handlers = [h for h in HANDLERS if self._defines(h)]
        self.history_s = self._history_s()
        loads = "".join(f', "{h}"' for h in self.handlers)
        table = ", ".join(f'"{h}": {h}' for h in self.handlers)
        driver = driver_template.replace("#LOADS#", f'load("policy"{loads})' if self.handlers else "")
        driver = driver.replace("#TABLE#", table).replace("#REMEDIES#", json.dumps(remedies))
        self._driver = self._module("<driver>", driver)

    def _module(self, filename: str, text: str) -> sl.FrozenModule:
        try:
            ast = sl.parse(filename, text, self._dialect)
        except sl.StarlarkError as exc:
            raise located("syntax", exc) from None
        module = sl.Module()
        self.guard.arm()
        try:
            sl.eval_with(self.guard.options, module, ast, self._globals, self._loader)
        except sl.StarlarkError as exc:
            if self._load_failure is not None:
                failure, self._load_failure = self._load_failure, None
                raise failure from None
            if self.guard.reason is not None:
                raise self.guard.failure() from None
            raise located("load", exc) from None
        except BaseException as exc:  # a panic inside the interpreter (pyo3 PanicException)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise _panic(exc) from None
        return module.freeze()

    def _load(self, name: str) -> sl.FrozenModule:
        """The FileLoader's callback: the interpreter turns its exception into a plain message, so the
        failure itself is kept aside (``_load_failure``) for ``_module`` to raise."""
        try:
            return self._frozen_module(name)
        except EvalFailure as failure:
            self._load_failure = self._load_failure or failure
            raise ValueError(failure.message) from None

    def _frozen_module(self, name: str) -> sl.FrozenModule:
        done = self._frozen.get(name)
        if done is not None:
            return done
        text = self.sources.get(name)
        if text is None:
            known = ", ".join(sorted(n for n in self.sources if n.startswith("@"))) or "none"
            raise EvalFailure("load", f"cannot load {name!r}: a policy may load only enmei's modules ({known})")
        if name in self._loading:
            raise EvalFailure("load", f"modules load each other in a cycle: {' -> '.join([*self._loading, name])}")
        self._loading.append(name)
        try:
            frozen = self._module(self.filenames.get(name, name), text)
        finally:
            self._loading.pop()
        self._frozen[name] = frozen
        return frozen

    def _defines(self, handler: str) -> bool:
        try:
            ast = sl.parse("<probe>", f'load("policy", "{handler}")\n', self._dialect)
            sl.eval(sl.Module(), ast, self._globals, self._loader)
        except sl.StarlarkError:
            return False
        return True

    def _history_s(self) -> float | None:
        """The policy's ``HISTORY_S`` (how far back it looks), if it defines one as a positive number."""
        if not self._defines("HISTORY_S"):
            return None
        module = sl.Module()
        ast = sl.parse("<probe>", 'load("policy", "HISTORY_S")\nX = HISTORY_S\n', self._dialect)
        sl.eval(module, ast, self._globals, self._loader)
        value = module["X"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e9:
            raise EvalFailure("load", f"HISTORY_S must be a positive number of seconds, not {value!r}",
                              file=self.filenames.get("policy"))
        return float(value)

    def call(self, payload: str) -> str:
        """Run ``dispatch(payload)``; returns the result as JSON text. Raises ``EvalFailure``."""
        guard = self.guard
        guard.arm()
        try:
            out = self._driver.call_with(guard.options, "dispatch", payload).value
        except sl.StarlarkError as exc:
            if guard.reason is not None:
                raise guard.failure() from None
            failure = located("runtime", exc)
            if failure.file == "<driver>" and "serialize" in failure.message:
                raise EvalFailure("result", "a handler returned something that is not data (decisions hold only "
                                            f"strings, numbers, lists and dicts): {failure.message}") from None
            raise failure from None
        except BaseException as exc:  # a panic inside the interpreter (pyo3 PanicException)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise _panic(exc) from None
        if not isinstance(out, str):
            raise EvalFailure("result", "the driver returned no JSON text")
        if len(out) > self.limits.max_result_bytes:
            raise EvalFailure("result", f"the result is {len(out):,} bytes, more than the limit of "
                                        f"{self.limits.max_result_bytes:,}")
        return out


# -- the sandbox process ---------------------------------------------------------------------------

HEADER = struct.Struct("<IB")  # payload length, frame type
LOAD, CALL, OK, RESULT, ERROR = b"L"[0], b"C"[0], b"O"[0], b"R"[0], b"E"[0]


def _read_exact(fd: int, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _write(fd: int, kind: int, body: bytes) -> None:
    data = HEADER.pack(len(body), kind) + body
    while data:
        data = data[os.write(fd, data):]


def _cap_memory(memory_mib: int) -> None:
    import resource

    with open("/proc/self/statm", "rb") as f:
        virtual = int(f.read().split()[0]) * _PAGE
    cap = virtual + (memory_mib + 64) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # an abort must not write a core file
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def serve(rfd: int = 0, wfd: int = 1, cap: Callable[[int], None] = _cap_memory) -> None:
    """Serve one program: a LOAD frame (JSON: sources, filenames, driver, limits), then CALL frames.

    Replies: OK with ``{"handlers": [...]}``, RESULT with the JSON text, or ERROR with an ``EvalFailure``
    as JSON. Returns at end of input (the supervisor closed the pipe or died).
    """
    program: Program | None = None
    while True:
        head = _read_exact(rfd, HEADER.size)
        if head is None:
            return
        size, kind = HEADER.unpack(head)
        body = _read_exact(rfd, size)
        if body is None:
            return
        try:
            if kind == LOAD:
                spec = json.loads(body)
                limits = Limits(**spec["limits"])
                if program is None:
                    cap(limits.memory_mib)
                program = Program(spec["sources"], spec["filenames"], spec["driver"], limits, spec["remedies"])
                _write(wfd, OK, json.dumps({"handlers": program.handlers, "history_s": program.history_s}).encode())
            elif kind == CALL and program is not None:
                _write(wfd, RESULT, program.call(body.decode()).encode())
            else:
                _write(wfd, ERROR, json.dumps({"kind": "crash", "message": "no program loaded"}).encode())
        except EvalFailure as failure:
            _write(wfd, ERROR, json.dumps(failure.as_dict()).encode())
        except MemoryError:
            _write(wfd, ERROR, json.dumps({"kind": "memory", "message": "out of memory"}).encode())
        except Exception as exc:  # a bug here must answer, not leave the supervisor waiting
            _write(wfd, ERROR, json.dumps({"kind": "crash", "message": f"{type(exc).__name__}: {exc}"}).encode())


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    serve()

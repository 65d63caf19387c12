"""The error tree of enmei: every error enmei raises on purpose is an ``EnmeiError``.

The whole tree, with the module that defines each error outside this one (``tests/unit/test_errors.py``
checks this drawing against the classes, and that each of them is raised somewhere)::

    EnmeiError                      the root; also raised as is for an unknown backend kind at run time
     +-- ConfigError                a config file is wrong (file, key, line)
     +-- StateError                 an operation was asked in a lifecycle state that does not allow it
     +-- VisorError                 a backend could not run or control a unit (unit, action, cause)
     |    +-- StartError            the unit could not be started
     |    +-- StopError             the unit could not be stopped
     |    +-- IdentityError         the pid no longer belongs to the process we started
     |    +-- CgroupError           visor.cgroup: a unit's cgroup could not be made, read, killed or removed
     |    +-- BootError             visor.qemu.errors: the guest did not reach a boot phase in time
     |    +-- ImageError            visor.qemu.errors: a guest image cannot be built or is not usable
     |    |    +-- MissingToolError visor.qemu.errors: a host tool or Debian package is missing
     |    +-- QmpError              visor.qemu.errors: a QMP command failed or the monitor went away
     |    +-- KernelInfoError       visor.qemu.errors: a guest kernel cannot be read from outside
     |    +-- UpdateFailed          visor.qemu.shadow: a shadow update did not swap (the original serves on)
     +-- PolicyError                a policy failed to load or evaluate (file, line, column)
     |    +-- PolicyFailure         policy.sandbox: one evaluation failed (error, limit, crash)
     +-- BoxError                   the journal could not be written or read
     |    +-- IntegrityError        the journal was cut, rolled back or replaced (seq of the first bad record)
         +-- DaemonError                daemons.base: a daemon of the kit could not be prepared
     |    +-- MissingDaemonError    daemons.base: its binary is missing (names the Debian package)
     +-- CtlError                   ctl.protocol: a ctl request cannot be served, or no enmei answers
     +-- FencedError                fleet.lease: an action under a lease refused, its fencing token no longer current
     +-- StateFormatError           detect.base: a saved detector state is not one this version reads
     +-- SignatureFileError         logs.signatures: a signature file is corrupt, foreign or inconsistent
     +-- TemplateFileError          logs.miner: a saved template file is corrupt, foreign or another version
     +-- UnknownBackendError        visor.registry: a config names a backend kind nobody registered
     +-- UnsafePathError            fsafe: a file enmei trusts has the wrong owner, mode or is a link
     +-- UpgradeError               engine.upgrade: an upgrade refused now, or a successor broke the handover
     +-- WebError                   web.auth: the dashboard cannot start (address, token file)

Private subclasses (a leading underscore) are left out. Internal signals that never leave their module
are not ``EnmeiError`` on purpose: ``policy.core.EvalFailure``, ``monitor.http.HttpError``,
``web.policy.ReplayUnavailable``, ``web.events.TooManyClients``.

Each error carries its fields as attributes and renders a sentence for a person in ``__str__``.
Causes are chained with ``raise ... from exc``.

This module is a leaf: it imports nothing from enmei.
"""

from __future__ import annotations

__all__ = [
    "BoxError",
    "ConfigError",
    "EnmeiError",
    "IdentityError",
    "IntegrityError",
    "PolicyError",
    "StartError",
    "StateError",
    "StopError",
    "VisorError",
]


class EnmeiError(Exception):
    """The root of every error enmei raises on purpose."""


class ConfigError(EnmeiError):
    """A configuration file is wrong. Names the file, the key path and, where known, the line."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None,
                 line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.key = key
        self.line = line

    def __str__(self) -> str:
        where = self.file or "<config>"
        if self.line is not None:
            where += f":{self.line}"
        if self.key:
            where += f": {self.key}"
        return f"{where}: {self.message}"


class StateError(EnmeiError):
    """An operation needs a lifecycle state other than the current one."""

    def __init__(self, what: str, current: str, required: str | tuple[str, ...]) -> None:
        self.what = what
        self.current = current
        self.required = (required,) if isinstance(required, str) else required
        super().__init__(str(self))

    def __str__(self) -> str:
        need = " or ".join(self.required)
        return f"{self.what} is {self.current}, needs {need}"


class VisorError(EnmeiError):
    """A backend could not run or control a unit."""

    def __init__(self, unit: str, action: str, cause: str) -> None:
        self.unit = unit
        self.action = action
        self.cause = cause
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"unit {self.unit!r}: {self.action} failed: {self.cause}"


class StartError(VisorError):
    """The unit could not be started (missing command, port in use, died at once...). ``config_error``:
    the unit's own configuration refused the start (a failing ``pre_start``, a missing user), so a fast
    retry cannot help; its ``cause`` then begins with ``config error:``."""

    def __init__(self, unit: str, action: str, cause: str, *, config_error: bool = False) -> None:
        self.config_error = config_error
        super().__init__(unit, action, f"config error: {cause}" if config_error else cause)


class StopError(VisorError):
    """The unit could not be stopped."""


class IdentityError(VisorError):
    """The pid no longer belongs to the process enmei started; nothing was signalled."""


class PolicyError(EnmeiError):
    """A policy could not be loaded or evaluated. Names the file, and line:column where known."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 column: int | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file or "<policy>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.message}"


class BoxError(EnmeiError):
    """The journal (D-Box) could not be written or read."""


class IntegrityError(BoxError):
    """The journal's hash chain is broken; ``seq`` is the first record that fails."""

    def __init__(self, seq: int, reason: str) -> None:
        self.seq = seq
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"journal record {self.seq}: {self.reason}"

"""What every daemon of the kit is: a temp dir prepared for one real Debian daemon on a loopback port.

A ``Daemon`` is made by its kind's ``prepare`` (``enmei.daemons.prepare("nginx")``) and promises:

* ``root``: a directory of its own (made by ``prepare``, mode 0755 so the daemon's user can reach its
  files), holding the daemon's config, data, pid, socket and temp paths — nothing outside it is written.
  ``cleanup()`` removes it; it never stops a process (the caller runs and stops the daemon).
* ``argv``: the command that runs the daemon in the foreground (no daemonizing), ``user``: who it runs
  as (None: the caller's user), ``stop_signal``: its natural graceful stop, ``probe``: its natural enmei
  liveness probe (a ``[[units.NAME.probes]]`` table), ``readiness``: a readiness probe where the daemon
  has a state of "alive but not serving" (it is then the start-up probe), ``pre_start``: commands that
  check its config first.
* ``unit_table()`` / ``unit_toml()``: all of that as an enmei unit, as a dict or as TOML text.
* ``request(timeout_s)``: one client request, as a user of the daemon would make it; raises
  ``RequestFailed`` (with what went wrong) if it is not answered correctly within ``timeout_s``.
* ``break_config()`` / ``fix_config()``: make the daemon's config invalid (so it refuses to start, and
  its ``pre_start`` check, if any, fails) and put the prepared one back.

A missing binary is a ``MissingDaemonError`` naming the Debian package that brings it.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from enmei.demo.ports import free_ports
from enmei.errors import EnmeiError

__all__ = ["Daemon", "DaemonError", "MissingDaemonError", "RequestFailed", "free_port", "make_root",
           "toml_table", "which"]


class DaemonError(EnmeiError):
    """A daemon of the kit could not be prepared (``daemon``: its kind, ``cause``: what went wrong)."""

    def __init__(self, daemon: str, cause: str) -> None:
        super().__init__(f"{daemon}: {cause}")
        self.daemon = daemon
        self.cause = cause


class MissingDaemonError(DaemonError):
    """The daemon's binary is not installed; ``package`` is the Debian package that brings it."""

    def __init__(self, daemon: str, binary: str, package: str) -> None:
        self.binary = binary
        self.package = package
        self.install_command = f"apt-get install -y {package}"
        super().__init__(daemon, f"{binary} is not installed (Debian package {package}; run: {self.install_command})")


class RequestFailed(Exception):  # a client's outcome, not an enmei error: the daemon failed
    """A client request to the daemon got no correct answer in time (the message says what it got)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picked it by a bind to port 0)."""
    return free_ports(1)[0]


def which(daemon: str, binary: str, package: str, *also: str) -> str:
    """The absolute path of ``binary`` (on PATH, or one of the absolute paths ``also``);
    ``MissingDaemonError`` naming ``package`` if none is there."""
    for cand in also:
        if os.access(cand, os.X_OK):
            return cand
    found = shutil.which(binary, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if found is None:
        raise MissingDaemonError(daemon, binary, package)
    return found


def make_root(daemon: str, parent: Path | None) -> Path:
    """A new directory ``enmei-DAEMON-*`` beneath ``parent`` (default: the temp dir), mode 0755.

    A daemon that runs as another user must reach its files: ``DaemonError`` if an ancestor of ``parent``
    is closed to others (pytest's ``tmp_path`` lives in a 0700 directory, for one)."""
    base = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    for d in [base.resolve(), *base.resolve().parents]:
        mode = d.stat().st_mode
        if not mode & stat.S_IXOTH:
            raise DaemonError(daemon, f"{d} is closed to other users (mode {stat.S_IMODE(mode):o}): the daemon "
                                      "could not reach its files; prepare it beneath another directory")
    root = Path(tempfile.mkdtemp(prefix=f"enmei-{daemon}-", dir=base))
    root.chmod(0o755)
    return root


def run_as_user(name: str | None) -> pwd.struct_passwd | None:
    """The passwd entry to run a daemon as ``name`` — only when enmei runs as root (else None: the
    daemon runs as the caller, who cannot change user)."""
    if name is None or os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {type(v).__name__}")


def toml_table(unit: str, table: dict[str, Any]) -> str:
    """``table`` as ``[units.UNIT]`` TOML: plain keys first, then sub-tables, then ``probes`` as an array
    of tables. Only the value types a unit's config uses (str, int, float, bool, lists, dicts)."""
    head = [f"[units.{unit}]"]
    tail: list[str] = []
    for key, value in table.items():
        if key == "probes":
            continue
        if isinstance(value, dict):
            tail += ["", f"[units.{unit}.{key}]"] + [f"{k} = {_toml_value(v)}" for k, v in value.items()]
        else:
            head.append(f"{key} = {_toml_value(value)}")
    for probe in table.get("probes", []):
        tail += ["", f"[[units.{unit}.probes]]"] + [f"{k} = {_toml_value(v)}" for k, v in probe.items()]
    return "\n".join(head + tail) + "\n"


class Daemon(ABC):
    """One daemon prepared in ``root`` to listen on 127.0.0.1:``port`` (see the module's docstring)."""

    kind: ClassVar[str]  # "nginx", the name it registers under
    package: ClassVar[str]  # the Debian package that brings it

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.argv: list[str] = []
        self.user: str | None = None
        self.stop_signal = "SIGTERM"
        self.probe: dict[str, Any] = {}  # the liveness probe (its failures restart the daemon)
        self.readiness: dict[str, Any] | None = None  # a readiness probe, if the daemon has a "not yet" state
        self.pre_start: list[list[str]] = []
        self.config_file: Path | None = None  # the file break_config/fix_config change
        self._good_config: str | None = None

    def unit_table(self) -> dict[str, Any]:
        """The daemon as an enmei process unit's keys (``command``, ``listen``, ``stop_signal``, ``probes``,
        the start-up probe, ``user``, ``pre_start``). Subclasses add their own choices."""
        table: dict[str, Any] = {"command": list(self.argv), "cwd": str(self.root),
                                 "listen": [f"127.0.0.1:{self.port}"], "stop_signal": self.stop_signal}
        if self.user is not None:
            table["user"] = self.user
        if self.pre_start:
            table["pre_start"] = [list(c) for c in self.pre_start]
        table["startup_probe"] = (self.readiness or self.probe)["name"]
        table["probes"] = [dict(self.probe)] + ([dict(self.readiness)] if self.readiness else [])
        return table

    def unit_toml(self, unit: str | None = None, **overrides: Any) -> str:
        """``unit_table()`` (with ``overrides`` replacing or adding keys; a value None removes a key) as
        the TOML text of ``[units.UNIT]`` (default: the kind's name)."""
        table = self.unit_table()
        for k, v in overrides.items():
            if v is None:
                table.pop(k, None)
            else:
                table[k] = v
        return toml_table(unit or self.kind, table)

    @classmethod
    @abstractmethod
    def binaries(cls) -> dict[str, str]:
        """The absolute paths of the programs the daemon needs, by role (``{"nginx": "/usr/sbin/nginx"}``);
        ``MissingDaemonError`` naming the Debian package if one is not installed."""

    @classmethod
    @abstractmethod
    def create(cls, root: Path, port: int, binaries: dict[str, str]) -> Daemon:
        """Write the daemon's files into ``root`` (empty, made for it) for 127.0.0.1:``port``; ``DaemonError``
        if that fails (an initdb that fails, say, with its last output line)."""

    @abstractmethod
    def request(self, timeout_s: float = 1.0) -> None:
        """One client request; ``RequestFailed`` unless it is answered correctly within ``timeout_s``."""

    @abstractmethod
    def break_text(self, good: str) -> str:
        """The config text ``good`` made invalid in a way the daemon (and its pre_start check) refuses."""

    def break_config(self) -> None:
        """Make the config invalid: the daemon refuses to start with it until ``fix_config()``."""
        if self.config_file is None:
            raise DaemonError(self.kind, "no config file to break")
        if self._good_config is None:
            self._good_config = self.config_file.read_text()
        _write(self.config_file, self.break_text(self._good_config))

    def fix_config(self) -> None:
        """Put the prepared config back (nothing to do if it was never broken)."""
        if self.config_file is not None and self._good_config is not None:
            _write(self.config_file, self._good_config)

    def cleanup(self) -> None:
        """Remove ``root`` and everything in it. The daemon must be stopped first: this stops nothing."""
        shutil.rmtree(self.root, ignore_errors=True)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    st = path.stat()
    os.chmod(tmp, stat.S_IMODE(st.st_mode))
    if os.geteuid() == 0:
        os.chown(tmp, st.st_uid, st.st_gid)
    os.replace(tmp, path)

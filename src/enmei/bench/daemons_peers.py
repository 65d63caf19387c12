"""The three supervisors of ``enmei bench daemons``, each running one daemon of the kit its natural way.

Every driver gets the same prepared daemon (``enmei.daemons``) and the same start wrapper (``run-KIND``
in the daemon's dir: ``exec`` of the daemon's foreground argv, after 4 s of sleep while the bench's
``slow`` flag file exists — the slow start of the "slow start + crash" fault, identical under every
supervisor). Each writes its configuration into its own directory; ``config_text()`` is what the
bench's JSON shows so a reader can check the comparison was fair.

* ``EnmeiDriver``: ``enmei up --plain --listen`` on a config holding the kit's unit (its probe,
  start-up probe, stop signal, kill mode, ``pre_start``), the command being the wrapper. The operator's
  start is ``POST /api/units/NAME/actions/start`` with the web token (``enmei ctl start`` when the
  local control socket exists).
* ``SupervisordDriver``: ``supervisord -n -c supervisord.conf``, the ``unix_http_server`` socket in the
  dir (0700), one ``[program:NAME]``: ``autorestart=true``, ``startsecs=1``, ``startretries=3``
  (supervisord's defaults), ``stopsignal`` = the daemon's graceful stop, ``stopwaitsecs=10``,
  ``stopasgroup``/``killasgroup``, ``user`` the daemon's user. supervisord has no health checks: a hung
  daemon is, to it, a running one. The operator's start is ``supervisorctl start NAME``.
* ``MonitDriver``: ``monit -I -c monitrc`` (mode 0600), ``set daemon 1`` (the smallest interval),
  its HTTP interface on a UNIX socket in the dir (for ``monit start``/``status``); one ``check process
  NAME with pidfile`` and the protocol test Monit ships for that daemon (``protocol http`` / ``redis`` /
  ``pgsql``, timeout 1 s, the same as enmei's probes). Monit runs ``start program`` and waits for it to
  return, it does not keep a foreground child: the start script does what a Monit user's init-style
  script does — starts the wrapper in a new session (``setsid``) with its output in a log, writes its
  pid into the pidfile, and returns once the daemon accepts connections on its port (at most 60 s, or
  at once with code 1 if the process died), like ``pg_ctl start -w``. The stop script sends the
  daemon's stop signal to its process group, waits up to 10 s and then SIGKILLs the group (as
  Debian's ``start-stop-daemon --retry=SIG/10/KILL``). Both run as the daemon's user (``as uid``).
  The operator's start is ``monit start NAME``. Stopping Monit the natural way: ``monit stop all``
  (its services stopped through the stop program), then SIGTERM to Monit.

``stop()`` of every driver is bounded (and SIGKILLs the supervisor by pid past its bound); none ever
signals a process it did not start, except through the supervisor it runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from enmei.daemons import Daemon
from enmei.demo.ports import free_ports

__all__ = ["DRIVERS", "SLOW_START_S", "Driver", "EnmeiDriver", "MonitDriver", "SupervisordDriver",
           "write_wrapper"]

SLOW_START_S = 4
STOP_BOUND_S = 60.0  # a supervisor that has not ended this long after its natural stop is SIGKILLed
# Monit's protocol test for each daemon of the kit (Monit 5.33 ships these).
_MONIT_PROTOCOL = {"nginx": "http", "redis": "redis", "postgresql": "pgsql"}
# Monit's start timeout; Monit also pauses the connection test this long after each start ("connection
# test paused ... while the process is starting"): 10 times what nginx and Redis take here, and for
# PostgreSQL room for crash recovery (the kit's own start-up bound for enmei is longer still).
_MONIT_START_TIMEOUT_S = {"postgresql": 20}
_MONIT_START_TIMEOUT_DEFAULT_S = 10


def write_wrapper(d: Daemon) -> Path:
    """``ROOT/run-KIND``: a shell script that sleeps ``SLOW_START_S`` while ``ROOT/slow`` exists, then
    ``exec``s the daemon's foreground argv (so the daemon keeps the wrapper's pid)."""
    path = d.root / f"run-{d.kind}"
    argv = " ".join(_sh(a) for a in d.argv)
    path.write_text("#!/bin/sh\n"
                    "# enmei bench daemons: the same start under every supervisor (slow while the flag exists)\n"
                    f"if [ -e {_sh(str(d.root / 'slow'))} ]; then sleep {SLOW_START_S}; fi\n"
                    f"exec {argv}\n")
    path.chmod(0o755)
    return path


def _sh(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def _signame(sig: str) -> str:
    return sig.upper().removeprefix("SIG")


class Driver(ABC):
    """One supervisor running one daemon ``d`` through ``wrapper``; its files in ``d.root / NAME``."""

    name: ClassVar[str]

    def __init__(self, d: Daemon, wrapper: Path) -> None:
        self.d = d
        self.wrapper = wrapper
        self.unit = d.kind
        self.dir = d.root / self.name
        self.dir.mkdir(mode=0o700)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "supervisor.log"

    @abstractmethod
    def config_text(self) -> str:
        """The supervisor's configuration for this daemon, as written to its file."""

    def shown_config(self) -> str:
        """What the bench's JSON shows of the configuration: ``config_text()``, the start wrapper, and
        any script the supervisor runs (no secret)."""
        return self.config_text() + f"\n# {self.wrapper.name}\n" + self.wrapper.read_text()

    @abstractmethod
    def start(self) -> None:
        """Start the supervisor (which starts the daemon); returns once the supervisor process runs."""

    @abstractmethod
    def steady(self) -> bool:
        """Whether the supervisor itself now holds the daemon to be up (not just the client's view)."""

    @abstractmethod
    def operator_start(self) -> str:
        """The operator's start command after fixing the config; returns what was run and its answer."""

    def reaction_log(self) -> Path:
        """The file where the supervisor writes what it does (``detect_s`` is its first new line naming
        the unit after a fault)."""
        return self.log_path

    def before_stop(self) -> None:  # noqa: B027 - a hook: most supervisors stop on SIGTERM alone
        """The natural first step of stopping the supervisor (Monit: ``monit stop all``)."""

    def stop(self) -> None:
        """Stop the supervisor the natural way (SIGTERM, after ``before_stop``), bounded by
        ``STOP_BOUND_S``; past it the supervisor is SIGKILLed by pid."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.before_stop()
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_BOUND_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _popen(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.dir, env=env, start_new_session=True)

    def log_tail(self, n: int = 1500) -> str:
        """The end of the supervisor's log and of its own output."""
        text = ""
        for p in (self.log_path, self.dir / "stdout.log"):
            with contextlib.suppress(OSError):
                text += p.read_text(errors="replace")[-n:]
        return text[-n:]


class EnmeiDriver(Driver):
    name = "enmei"

    def __init__(self, d: Daemon, wrapper: Path) -> None:
        super().__init__(d, wrapper)
        self.web_port = free_ports(1)[0]
        self.cfg = self.dir / "enmei.toml"
        self.cfg.write_text(self.config_text())

    def config_text(self) -> str:
        return '[supervisor]\nstate_dir = "state"\n\n' + self.d.unit_toml(self.unit, command=[str(self.wrapper)])

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
        self._popen([sys.executable, "-m", "enmei", "up", "--plain", "--listen", f"127.0.0.1:{self.web_port}",
                     str(self.cfg)], env)

    def _api(self, path: str, data: bytes | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"}
        if data is not None:
            headers["Authorization"] = f"Bearer {(self.dir / 'state' / 'web.token').read_text().strip()}"
        req = urllib.request.Request(f"http://127.0.0.1:{self.web_port}{path}", data=data, headers=headers,
                                     method="POST" if data is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - loopback, our own server
                return int(r.status), bytes(r.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), bytes(exc.read())

    def steady(self) -> bool:
        try:
            status, body = self._api(f"/api/units/{self.unit}", timeout=2.0)
            return status == 200 and json.loads(body).get("state") == "running"
        except (OSError, ValueError):
            return False

    def operator_start(self) -> str:
        try:
            status, body = self._api(f"/api/units/{self.unit}/actions/start", data=b"{}", timeout=10.0)
            return f"POST /api/units/{self.unit}/actions/start: {status} {body[:200].decode(errors='replace')}"
        except OSError as exc:
            return f"POST /api/units/{self.unit}/actions/start: {exc}"


class SupervisordDriver(Driver):
    name = "supervisord"

    def __init__(self, d: Daemon, wrapper: Path) -> None:
        super().__init__(d, wrapper)
        self.sock = self.dir / "supervisor.sock"
        self.cfg = self.dir / "supervisord.conf"
        self.cfg.write_text(self.config_text())

    def config_text(self) -> str:
        user = f"user={self.d.user}\n" if self.d.user else ""
        return (f"[unix_http_server]\nfile={self.sock}\nchmod=0700\n\n"
                f"[supervisord]\nnodaemon=true\nlogfile={self.log_path}\nloglevel=info\n"
                f"pidfile={self.dir / 'supervisord.pid'}\nchildlogdir={self.dir}\n"
                + ("user=root\n" if os.geteuid() == 0 else "") + "\n"
                "[rpcinterface:supervisor]\n"
                "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
                f"[supervisorctl]\nserverurl=unix://{self.sock}\n\n"
                f"[program:{self.unit}]\ncommand={self.wrapper}\ndirectory={self.d.root}\n{user}"
                "autostart=true\nautorestart=true\nstartsecs=1\nstartretries=3\n"
                f"stopsignal={_signame(self.d.stop_signal)}\nstopwaitsecs=10\nstopasgroup=true\nkillasgroup=true\n"
                f"redirect_stderr=true\nstdout_logfile={self.dir / (self.unit + '.log')}\n")

    def reaction_log(self) -> Path:
        return self.log_path

    def start(self) -> None:
        exe = shutil.which("supervisord") or "supervisord"
        # supervisord writes its own logfile; its stdout (nodaemon) repeats it: keep that apart.
        with open(self.dir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen([exe, "-n", "-c", str(self.cfg)], stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.dir, start_new_session=True)

    def _ctl(self, *args: str, timeout: float = 15.0) -> str:
        exe = shutil.which("supervisorctl") or "supervisorctl"
        try:
            r = subprocess.run([exe, "-c", str(self.cfg), *args], capture_output=True, text=True, timeout=timeout,
                               check=False)
            return (r.stdout + r.stderr).strip()
        except subprocess.TimeoutExpired:
            return "supervisorctl timed out"

    def steady(self) -> bool:
        return "RUNNING" in self._ctl("status", self.unit, timeout=5.0)

    def operator_start(self) -> str:
        return f"supervisorctl start {self.unit}: {self._ctl('start', self.unit)}"


class MonitDriver(Driver):
    name = "monit"

    def __init__(self, d: Daemon, wrapper: Path) -> None:
        super().__init__(d, wrapper)
        self.rc = self.dir / "monitrc"
        self.sock = self.dir / "monit.sock"
        self.secret = secrets.token_hex(12)
        # The start/stop scripts run as the daemon's user: the pidfile and the daemon's log are in a
        # directory of that user's.
        self.run = d.root / "monit-run"
        self.run.mkdir(mode=0o755)
        if d.user is not None and os.geteuid() == 0:
            pw = pwd.getpwnam(d.user)
            os.chown(self.run, pw.pw_uid, pw.pw_gid)
        self.pidfile = self.run / f"{self.unit}.pid"
        self.start_script = d.root / "monit-start"
        self.stop_script = d.root / "monit-stop"
        self._write_scripts()
        self.rc.write_text(self.config_text())
        self.rc.chmod(0o600)  # Monit refuses a control file others can read (it holds the password)

    def _write_scripts(self) -> None:
        pid, log = _sh(str(self.pidfile)), _sh(str(self.run / f"{self.unit}.log"))
        self.start_timeout_s = _MONIT_START_TIMEOUT_S.get(self.d.kind, _MONIT_START_TIMEOUT_DEFAULT_S)
        self.start_script.write_text(
            "#!/bin/bash\n"
            "# Monit's start program: the daemon in a session of its own, its pid in the pidfile; returns\n"
            "# once it accepts connections on its port (like pg_ctl start -w), code 1 if it died first.\n"
            f"cd {_sh(str(self.d.root))} || exit 1\n"
            f"setsid {_sh(str(self.wrapper))} </dev/null >>{log} 2>&1 &\n"
            f"echo $! > {pid}\n"
            f"for _ in $(seq {self.start_timeout_s * 10}); do\n"
            "  # dead, or a zombie not reaped yet (kill -0 would take it for alive)\n"
            '  st=$(cut -d" " -f3 /proc/$!/stat 2>/dev/null); [ -n "$st" ] && [ "$st" != Z ] || exit 1\n'
            f"  (exec 3<>/dev/tcp/127.0.0.1/{self.d.port}) 2>/dev/null && exit 0\n"
            "  sleep 0.1\n"
            "done\n"
            "exit 1\n")
        sig = _signame(self.d.stop_signal)
        self.stop_script.write_text(
            "#!/bin/bash\n"
            "# Monit's stop program: the stop signal to the daemon's process group, SIGKILL after 10 s.\n"
            f"pid=$(cat {pid} 2>/dev/null) || exit 0\n"
            '[ -n "$pid" ] || exit 0\n'
            f'kill -{sig} -- "-$pid" 2>/dev/null || kill -{sig} "$pid" 2>/dev/null || exit 0\n'
            "for _ in $(seq 100); do\n"
            '  kill -0 "$pid" 2>/dev/null || exit 0\n'
            "  sleep 0.1\n"
            "done\n"
            'kill -KILL -- "-$pid" 2>/dev/null; kill -KILL "$pid" 2>/dev/null\n'
            "exit 0\n")
        for p in (self.start_script, self.stop_script):
            p.chmod(0o755)

    def config_text(self) -> str:
        as_user = ""
        if self.d.user and os.geteuid() == 0:  # numeric: a user named like a keyword ("redis") is a syntax error
            pw = pwd.getpwnam(self.d.user)
            as_user = f" as uid {pw.pw_uid} and gid {pw.pw_gid}"
        proto = _MONIT_PROTOCOL.get(self.d.kind)
        test = (f"    if failed host 127.0.0.1 port {self.d.port}" + (f" protocol {proto}" if proto else "")
                + " with timeout 1 seconds then restart\n")
        return ("set daemon 1\n"
                f"set logfile {self.log_path}\n"
                f"set pidfile {self.dir / 'monit.pid'}\n"
                f"set idfile {self.dir / 'monit.id'}\n"
                f"set statefile {self.dir / 'monit.state'}\n"
                f"set httpd unixsocket {self.sock}\n"
                f"    allow bench:{self.secret}\n\n"
                f"check process {self.unit} with pidfile {self.pidfile}\n"
                f'    start program = "{self.start_script}"{as_user} with timeout {self.start_timeout_s} seconds\n'
                f'    stop program = "{self.stop_script}"{as_user} with timeout 30 seconds\n'
                + test + self._ready_check())

    def _ready_check(self) -> str:
        """PostgreSQL: Monit's pgsql protocol test takes a read timeout for an answer (a hung postmaster
        passes it: seen with strace, Monit 5.33), so ``check program`` runs ``pg_isready`` as Monit users
        do; exit 2 (no response) for 5 cycles restarts it — 1 (rejecting: starting, recovering) does not,
        and 5 cycles let a slow start (4 s here) finish."""
        if self.d.kind != "postgresql":
            return ""
        isready = self.d.binaries()["pg_isready"]
        monit = shutil.which("monit") or "monit"
        return (f'\ncheck program {self.unit}_ready with path "{isready} -q -h 127.0.0.1 -p {self.d.port} -t 1"'
                " with timeout 3 seconds\n"
                f'    if status = 2 for 5 cycles then exec "{monit} -c {self.rc} restart {self.unit}"\n')

    def start(self) -> None:
        exe = shutil.which("monit") or "monit"
        with open(self.dir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen([exe, "-I", "-c", str(self.rc)], stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.dir, start_new_session=True)

    def _cli(self, *args: str, timeout: float = 15.0) -> str:
        exe = shutil.which("monit") or "monit"
        try:
            r = subprocess.run([exe, "-c", str(self.rc), *args], capture_output=True, text=True, timeout=timeout,
                               check=False)
            return (r.stdout + r.stderr).strip()
        except subprocess.TimeoutExpired:
            return "monit timed out"

    def steady(self) -> bool:
        """Monit says OK and its connection test has run (it is paused for the start timeout after a
        start: a hang before that is not Monit's to see)."""
        out = self._cli("status", self.unit, timeout=5.0)
        return (re.search(r"^\s*status\s+OK\s*$", out, re.MULTILINE) is not None
                and re.search(r"^\s*port response time\s+\d", out, re.MULTILINE) is not None)

    def operator_start(self) -> str:
        return f"monit start {self.unit}: {self._cli('start', self.unit) or 'ok'}"

    def before_stop(self) -> None:
        self._cli("stop", "all")
        end = time.monotonic() + 30
        while time.monotonic() < end:
            out = self._cli("status", self.unit, timeout=5.0)
            if re.search(r"^\s*monitoring status\s+Not monitored\s*$", out, re.MULTILINE):
                return
            time.sleep(0.2)

    def shown_config(self) -> str:
        return (super().shown_config().replace(self.secret, "SECRET")
                + f"\n# {self.start_script.name}\n" + self.start_script.read_text()
                + f"\n# {self.stop_script.name}\n" + self.stop_script.read_text())


DRIVERS: dict[str, type[Driver]] = {d.name: d for d in (EnmeiDriver, SupervisordDriver, MonitDriver)}

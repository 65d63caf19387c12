"""A throw-away PostgreSQL 15 server for the fleet's tests and ``enmei bench fleet``: the daemon kit's
cluster (``enmei.daemons.postgresql``: ``initdb`` in a temp dir, the postmaster in the foreground as the
``postgres`` user, on a free 127.0.0.1 port), run directly by this process.

Promises: ``start()`` returns once the server accepts connections (``DaemonError`` after ``ready_timeout_s``
with the end of its log); ``kill()`` is ``kill -9`` of the postmaster alone (its children then exit by
themselves: a crash, the next ``start()`` recovers from the WAL); ``stop()`` is the fast shutdown;
``cleanup()`` stops it if running and removes its directory. Only the process started here is ever
signalled, by its pid. Never the system's instance.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from enmei.daemons import prepare
from enmei.daemons.base import Daemon, DaemonError, RequestFailed, run_as_user

__all__ = ["TempPostgres"]


class TempPostgres:
    """One PostgreSQL cluster under ``parent`` (default: the temp dir)."""

    def __init__(self, parent: Path | None = None, *, ready_timeout_s: float = 120.0) -> None:
        self.daemon: Daemon = prepare("postgresql", parent)
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.daemon.root / "server.log"

    @property
    def port(self) -> int:
        return self.daemon.port

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> TempPostgres:
        """Run the postmaster (if not running) and wait until it accepts connections. After a ``kill()`` the
        old one's backends may hold the data dir for a moment: a postmaster that exits at once is started
        again until ``ready_timeout_s``."""
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            if self.proc is None or self.proc.poll() is not None:
                self._spawn()
            try:
                self.daemon.request(timeout_s=1.0)
                return self
            except RequestFailed:
                pass
            if time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise DaemonError("postgresql", f"not accepting connections after {self.ready_timeout_s:g}s: "
                                                f"{tail}")
            time.sleep(0.2)

    def _spawn(self) -> None:
        kw: dict[str, Any] = {}
        pw = run_as_user(self.daemon.user)
        if pw is not None:
            kw = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.daemon.argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.daemon.root, **kw)

    def kill(self) -> None:
        """``kill -9`` of the postmaster (the server "dies"); waits for it to be reaped."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, timeout_s: float = 60.0) -> None:
        """The fast shutdown (SIGINT); SIGKILL past ``timeout_s``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        self._reap_orphans()
        self.daemon.cleanup()

    def _reap_orphans(self) -> None:
        # Backends of a killed postmaster exit on their own within moments; wait (bounded) so the data dir
        # is not removed under them. They are not our children: only watched, never signalled.
        pidfile = self.daemon.root / "data" / "postmaster.pid"
        deadline = time.monotonic() + 10
        while pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    def __enter__(self) -> TempPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

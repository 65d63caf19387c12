"""Redis (Debian ``redis-server``) in a temp dir, in the foreground.

Choices, and why:

* ``redis-server ROOT/redis.conf``: a conf file (so it can be broken and fixed like an operator's) with
  ``port``, ``bind 127.0.0.1``, ``dir ROOT/data``, ``daemonize no``, ``supervised no`` and
  ``logfile ""`` (the log on stdout, into enmei's capture).
* ``save ""`` and ``appendonly no``: no persistence — the kit's Redis is a cache; a restart starts empty
  and fast, and no fork for a background save ever shows up as an extra process of the unit.
* Runs as ``redis`` (Debian's user) when enmei is root.
* stop: ``SIGTERM``, Redis's graceful shutdown (with ``save ""`` it writes nothing).
* probe: TCP ``PING`` → ``+PONG``: a hung (SIGSTOPped) Redis fails it, a bare connect would not (the
  kernel completes the handshake into the backlog).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from enmei.daemons.base import Daemon, RequestFailed, run_as_user, which
from enmei.daemons.registry import register

__all__ = ["Redis"]


@register
class Redis(Daemon):
    kind = "redis"
    package = "redis-server"

    @classmethod
    def binaries(cls) -> dict[str, str]:
        return {"redis-server": which(cls.kind, "redis-server", cls.package, "/usr/bin/redis-server")}

    @classmethod
    def create(cls, root: Path, port: int, binaries: dict[str, str]) -> Redis:
        d = cls(root, port)
        pw = run_as_user("redis")
        data = root / "data"
        data.mkdir(mode=0o750)
        if pw is not None:
            os.chown(data, pw.pw_uid, pw.pw_gid)
            d.user = pw.pw_name
        conf = root / "redis.conf"
        conf.write_text(f"# enmei daemon kit: Redis in {root}\n"
                        f"port {port}\n"
                        "bind 127.0.0.1\n"
                        "protected-mode yes\n"
                        f"dir {data}\n"
                        "daemonize no\n"
                        "supervised no\n"
                        'logfile ""\n'
                        'save ""\n'
                        "appendonly no\n")
        os.chmod(conf, 0o644)
        d.argv = [binaries["redis-server"], str(conf)]
        d.stop_signal = "SIGTERM"
        d.config_file = conf
        d.probe = {"name": "ping", "kind": "tcp", "port": port, "send": "PING\r\n", "expect": "+PONG",
                   "interval_s": 0.5, "timeout_s": 1.0, "fail_after": 3}
        return d

    def unit_table(self) -> dict[str, Any]:
        table = super().unit_table()
        table["stop_timeout_s"] = 10
        table["startup_timeout_s"] = 30
        return table

    def request(self, timeout_s: float = 1.0) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout_s) as s:
                s.sendall(b"PING\r\n")
                got = b""
                while not got.endswith(b"\r\n") and len(got) < 64:
                    chunk = s.recv(64)
                    if not chunk:
                        break
                    got += chunk
        except OSError as exc:
            raise RequestFailed(f"PING on 127.0.0.1:{self.port}: {exc}") from exc
        if got != b"+PONG\r\n":
            raise RequestFailed(f"PING on 127.0.0.1:{self.port}: {got[:80]!r}")

    def break_text(self, good: str) -> str:
        return good + "no-such-directive-enmei yes\n"

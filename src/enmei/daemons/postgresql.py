"""PostgreSQL 15 (Debian ``postgresql``) in a temp dir: a cluster made by ``initdb``, run by ``postgres``.

Choices, and why:

* ``initdb --auth=trust --username=postgres -E UTF8 --locale=C --no-sync`` as the ``postgres`` user (when
  enmei is root; PostgreSQL refuses to run as root) into ``ROOT/data`` (0700, the user's): trust is
  safe here because the cluster listens on 127.0.0.1 and a socket in the dir only; ``--no-sync``
  because a temp cluster need not survive a power cut (it saves seconds of fsync on a loaded machine).
* ``postgres -D ROOT/data -k ROOT/run -p PORT -c listen_addresses=127.0.0.1``: the postmaster in the
  foreground (never ``pg_ctl``, which daemonizes), its UNIX socket in the dir, its log on stderr.
* stop: ``SIGINT``, the *fast* shutdown (clients disconnected, a checkpoint, a clean shutdown record):
  SIGTERM is the *smart* one, which waits for every client to leave; SIGQUIT is the immediate one, which
  needs crash recovery on the next start. ``kill_mode = "main-then-group"``: only the postmaster gets it
  (it stops its children in order, as systemd's ``KillMode=mixed``); what is left is killed when it ends.
* probes: ``pg_isready -h 127.0.0.1 -p PORT -U postgres -t 1`` twice, as exec probes: liveness ``alive``
  passes on exit 0 *or* 1 (the server answered, even "rejecting: starting up"), so the postmaster's own
  crash recovery after a killed child is not taken for a hang and restarted in the middle (it was: see
  ``tests/e2e/daemons/test_postgresql.py``); readiness ``ready`` (exit 0: accepting) marks the unit
  degraded meanwhile and is the start-up probe, so a slow start (recovery) is never killed by
  liveness (``startup_timeout_s = 120``).
* ``request()`` speaks the wire protocol itself (startup, ``SELECT 1``, terminate): no ``psql`` process
  per request; ``PgClient`` keeps a connection open (a client connected during a stop).
"""

from __future__ import annotations

import contextlib
import glob
import os
import socket
import struct
import subprocess
from pathlib import Path
from typing import Any

from enmei.daemons.base import Daemon, DaemonError, MissingDaemonError, RequestFailed, run_as_user
from enmei.daemons.registry import register

__all__ = ["PgClient", "PostgreSQL", "bindir"]

_PREFERRED = "15"


def bindir() -> Path:
    """The directory of PostgreSQL's server programs: Debian's ``/usr/lib/postgresql/15/bin`` (else the
    newest version there); ``MissingDaemonError`` naming ``postgresql`` if there is none."""
    cands = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: (Path(p).parent.parent.name != _PREFERRED, -_version(p)))
    if not cands:
        raise MissingDaemonError("postgresql", "postgres", "postgresql")
    return Path(cands[0]).parent


def _version(path: str) -> float:
    try:
        return float(Path(path).parent.parent.name)
    except ValueError:
        return 0.0


class PgClient:
    """One client connection over TCP to 127.0.0.1:``port`` as ``user`` (trust auth), simple queries only.

    ``connect()`` and ``query()`` raise ``RequestFailed`` with the server's error message (``the database
    system is starting up``, a shutdown, a refused connection) or the socket's error."""

    def __init__(self, port: int, *, user: str = "postgres", database: str = "postgres",
                 timeout_s: float = 2.0) -> None:
        self.port, self.user, self.database, self.timeout_s = port, user, database, timeout_s
        self._sock: socket.socket | None = None

    def connect(self) -> PgClient:
        try:
            self._sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout_s)
            body = struct.pack("!i", 196608) + b"".join(
                k.encode() + b"\0" + v.encode() + b"\0" for k, v in (("user", self.user),
                                                                     ("database", self.database))) + b"\0"
            self._sock.sendall(struct.pack("!i", len(body) + 4) + body)
            self._until_ready()
        except OSError as exc:
            self.close()
            raise RequestFailed(f"connect to 127.0.0.1:{self.port}: {exc}") from exc
        except BaseException:
            self.close()
            raise
        return self

    def query(self, sql: str) -> list[list[bytes | None]]:
        """The rows of one simple query (each column's text, None for NULL)."""
        if self._sock is None:
            raise RequestFailed("not connected")
        payload = sql.encode() + b"\0"
        try:
            self._sock.sendall(b"Q" + struct.pack("!i", len(payload) + 4) + payload)
        except OSError as exc:
            raise RequestFailed(f"query on 127.0.0.1:{self.port}: {exc}") from exc
        return self._until_ready()

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.sendall(b"X" + struct.pack("!i", 4))
            self._sock.close()
            self._sock = None

    def __enter__(self) -> PgClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _until_ready(self) -> list[list[bytes | None]]:
        rows: list[list[bytes | None]] = []
        while True:
            kind, body = self._message()
            if kind == b"E":
                fields = dict((f[:1], f[1:].decode(errors="replace")) for f in body.split(b"\0") if f)
                raise RequestFailed(f"127.0.0.1:{self.port}: {fields.get(b'M', 'error')}")
            if kind == b"R" and struct.unpack("!i", body[:4])[0] != 0:
                raise RequestFailed(f"127.0.0.1:{self.port}: asks for a password (auth {body[:4].hex()})")
            if kind == b"D":
                rows.append(_row(body))
            if kind == b"Z":
                return rows

    def _message(self) -> tuple[bytes, bytes]:
        head = self._exactly(5)
        (length,) = struct.unpack("!i", head[1:])
        if not 4 <= length <= 1 << 24:
            raise RequestFailed(f"127.0.0.1:{self.port}: a message of {length} bytes")
        return head[:1], self._exactly(length - 4)

    def _exactly(self, n: int) -> bytes:
        assert self._sock is not None
        buf = b""
        try:
            while len(buf) < n:
                chunk = self._sock.recv(n - len(buf))
                if not chunk:
                    raise RequestFailed(f"127.0.0.1:{self.port}: connection closed")
                buf += chunk
        except OSError as exc:
            raise RequestFailed(f"127.0.0.1:{self.port}: {exc}") from exc
        return buf


def _row(body: bytes) -> list[bytes | None]:
    (n,) = struct.unpack("!h", body[:2])
    out: list[bytes | None] = []
    at = 2
    for _ in range(n):
        (size,) = struct.unpack("!i", body[at:at + 4])
        at += 4
        if size < 0:
            out.append(None)
        else:
            out.append(body[at:at + size])
            at += size
    return out


@register
class PostgreSQL(Daemon):
    kind = "postgresql"
    package = "postgresql"

    @classmethod
    def binaries(cls) -> dict[str, str]:
        b = bindir()
        out = {name: str(b / name) for name in ("postgres", "initdb", "pg_isready")}
        for name, path in out.items():
            if not os.access(path, os.X_OK):
                raise MissingDaemonError(cls.kind, name, "postgresql")
        return out

    @classmethod
    def create(cls, root: Path, port: int, binaries: dict[str, str]) -> PostgreSQL:
        d = cls(root, port)
        pw = run_as_user("postgres")
        if os.geteuid() == 0 and pw is None:
            raise DaemonError(cls.kind, "PostgreSQL refuses to run as root and there is no 'postgres' user")
        data, run = root / "data", root / "run"
        data.mkdir(mode=0o700)
        run.mkdir(mode=0o755)
        kw: dict[str, Any] = {}
        if pw is not None:
            for p in (data, run):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            kw = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
            d.user = pw.pw_name
        r = subprocess.run([binaries["initdb"], "-D", str(data), "--auth=trust", "--username=postgres",
                            "-E", "UTF8", "--locale=C", "--no-sync"],
                           capture_output=True, text=True, check=False, cwd=root, umask=0o077, timeout=300, **kw)
        if r.returncode != 0:
            tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise DaemonError(cls.kind, f"initdb exited with code {r.returncode}: {tail}")
        d.argv = [binaries["postgres"], "-D", str(data), "-k", str(run), "-p", str(port),
                  "-c", "listen_addresses=127.0.0.1",
                  # Its dynamic shared memory in the data dir (pg_dynshmem), not /dev/shm: a postmaster
                  # killed -9 (a fault the kit is for) left its segments in /dev/shm for good once the data
                  # dir was deleted (20 here from one day of tests); its next start only removes its own.
                  "-c", "dynamic_shared_memory_type=mmap"]
        d.stop_signal = "SIGINT"
        d.config_file = data / "postgresql.conf"
        isready = [binaries["pg_isready"], "-q", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                   "-d", "postgres", "-t", "1"]
        # pg_isready exits 0 accepting, 1 rejecting (starting up, in recovery, shutting down), 2 no answer.
        # Alive is "answers at all": the postmaster recovering after a crashed child, by itself, rejects
        # connections for a while and must not be restarted in the middle of it. Ready is "accepting".
        d.probe = {"name": "alive", "kind": "exec", "command": isready, "expect_exit": [0, 1],
                   "interval_s": 0.5, "timeout_s": 1.5, "fail_after": 2}
        d.readiness = {"name": "ready", "kind": "exec", "command": isready, "role": "readiness",
                       "interval_s": 0.5, "timeout_s": 1.5, "fail_after": 2}
        return d

    def unit_table(self) -> dict[str, Any]:
        table = super().unit_table()
        table["kill_mode"] = "main-then-group"
        table["stop_timeout_s"] = 30  # a fast shutdown writes a checkpoint first
        table["startup_timeout_s"] = 120  # crash recovery replays the WAL before it accepts connections
        return table

    def request(self, timeout_s: float = 1.0) -> None:
        with PgClient(self.port, timeout_s=timeout_s) as c:
            rows = c.query("SELECT 1")
        if rows != [[b"1"]]:
            raise RequestFailed(f"SELECT 1 on 127.0.0.1:{self.port}: {rows!r}")

    def break_text(self, good: str) -> str:
        return good + "\nno_such_setting_enmei = on\n"

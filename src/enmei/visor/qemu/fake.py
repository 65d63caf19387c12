"""TEST SEAM — scripted QEMUs for unit tests; never used by enmei itself.

``FakeHost`` subclasses the real ``QemuHost`` and ``FakeMonitor`` the real QMP client (``Monitor``);
they override only the I/O edge (process start, pidfds, sockets, host tools). Everything above —
``Machine``, ``StandbyManager``, ``strays``, ``disks``, ``phase_image``, the backend — runs unchanged,
so standby, takeover and adoption are tested without QEMU. Files stay real (in the test's temporary
folder): pid files, console logs, disks (a fake snapshot disk is JSON naming its snapshots, so that a
copy of it carries them, as a copy of a qcow2 does).

``FakeWorld`` is the machine the QEMUs run on; it outlives a supervisor. Give each supervisor its own
``FakeHost(world)``; ``FakeHost.die()`` is a supervisor killed at that instant: every later operation of
that host raises ``SupervisorDied`` (a ``BaseException``, so that no ``except Exception`` of the code
under test swallows it) and nothing it does reaches the world any more. ``FakeWorld.before`` is called
before every operation (``"qmp"``, ``"kill"``, ``"knock"``, ``"spawn"``) and can die or fail there.

A ``FakeQemu`` answers QMP in QEMU 7.2's reply shapes (``query-status``, ``query-jobs``,
``query-named-block-nodes``, ``human-monitor-command``...) and emits its events (``STOP``, ``RESUME``,
``RESET``, ``SHUTDOWN``, ``GUEST_PANICKED``). Its guest prints the boot phase markers to its console
file, waits at ``service-ready`` for ``go`` on its gate, then prints ``data-ready`` (it "mounts" the
data disk: ``FakeWorld.disk_users`` says which guests have it mounted).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from enmei.errors import StartError
from enmei.visor.qemu import image as images
from enmei.visor.qemu.host import Pin, ProcInfo, QemuHost
from enmei.visor.qemu.qmp import EventFn, Monitor

__all__ = ["FakeHost", "FakeMonitor", "FakeQemu", "FakeWorld", "SupervisorDied"]

_BOOT = ("kernel", "userspace", "network", "service-ready")
_BOOT_STEP_S = 0.005


class SupervisorDied(BaseException):  # a BaseException: the code under test must not catch it
    """The supervisor owning this host was killed (``FakeHost.die``)."""


BeforeFn = Callable[["FakeHost", str, "FakeQemu | None", str], None]
"""(host, operation, the QEMU it concerns, detail: the QMP command...): may call ``host.die()`` and
raise ``SupervisorDied``, or raise ``OSError`` to fail the operation."""


def _unopt(value: str) -> str:
    return value.replace(",,", "\0").split(",")[0].replace("\0", ",")


def _opt_value(arg: str, key: str) -> str | None:
    for part in arg.replace(",,", "\0").split(","):
        if part.startswith(key + "="):
            return part[len(key) + 1:].replace("\0", ",")
    return None


@dataclass
class FakeQemu:
    """One scripted QEMU process (``FakeWorld.spawn`` parses its real command line)."""

    world: FakeWorld
    pid: int
    create_time: float
    argv: list[str]
    qmp_path: Path
    gate_path: Path
    pidfile: Path
    console: Path
    sys_disk: Path
    hostfwds: set[int] = field(default_factory=set)
    status: str = "running"
    alive: bool = True
    phase: str | None = None  # the guest's last boot phase (None: not booted)
    mounted: bool = False  # the guest has the data disk mounted (it passed its gate)
    panic_action: str = "pause"
    monitors: list[FakeMonitor] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    migration: str | None = None  # query-migrate's status once a migration ran
    _exit_watchers: list[Callable[[], None]] = field(default_factory=list)
    _boot: asyncio.Task[None] | None = None

    # -- the guest -----------------------------------------------------------------------------------

    def _print(self, line: str) -> None:
        with open(self.console, "a") as f:
            f.write(line + "\n")

    def _run_guest(self) -> None:
        """The guest runs on from ``phase`` (boots if it has none)."""
        if self._boot is None or self._boot.done():
            self._boot = asyncio.get_running_loop().create_task(self._boot_on(), name=f"fake-guest-{self.pid}")

    async def _boot_on(self) -> None:
        while (self.alive and self.status == "running" and self.phase != "service-ready"
               and (self.phase is None or self.phase != self.world.boot_stops_at)):
            nxt = _BOOT[0] if self.phase not in _BOOT else _BOOT[_BOOT.index(self.phase) + 1]
            await asyncio.sleep(_BOOT_STEP_S)
            if not (self.alive and self.status == "running"):
                return
            self.phase = nxt
            self._print(f"enmei-phase: {nxt} t=1.{_BOOT.index(nxt)}")

    def knocked(self) -> None:
        if self.alive and self.status == "running" and self.phase == "service-ready" and not self.mounted:
            self.mounted = True
            self._print("enmei-phase: data-ready t=2.0")

    def panic(self) -> None:
        """The guest kernel panics (``panic_action = "pause"``: QEMU keeps the guest paused)."""
        self._print("Kernel panic - not syncing: fake")
        self.mounted = False
        self.status = "guest-panicked"
        self.emit("GUEST_PANICKED", {"action": "pause", "info": {"type": "hyper-v"}})

    # -- the process ---------------------------------------------------------------------------------

    def exit(self, reason: str | None = None) -> None:
        """QEMU ends (``reason``: its SHUTDOWN event's; None = killed, no event)."""
        if not self.alive:
            return
        if reason is not None:
            self.emit("SHUTDOWN", {"guest": reason.startswith("guest"), "reason": reason})
        self.alive = False
        self.mounted = False
        if self._boot is not None:
            self._boot.cancel()
        for m in list(self.monitors):
            m._fake_lost()
        self.monitors.clear()
        watchers, self._exit_watchers = self._exit_watchers, []
        loop = asyncio.get_running_loop()
        for w in watchers:
            loop.call_soon(w)

    def emit(self, event: str, data: dict[str, Any]) -> None:
        now = time.time()
        msg = {"event": event, "data": data,
               "timestamp": {"seconds": int(now), "microseconds": int((now % 1) * 1e6)}}
        for m in list(self.monitors):
            m._deliver(msg)

    # -- QMP -------------------------------------------------------------------------------------------

    def _snapshots(self) -> dict[str, str | None]:
        try:
            data = json.loads(self.sys_disk.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return dict(data.get("snapshots", {}))

    def _write_snapshots(self, snaps: dict[str, str | None]) -> None:
        self.sys_disk.write_text(json.dumps({"format": "fake-qcow2", "snapshots": snaps}))

    def qmp(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        """One command, answered in QMP's wire shape."""
        self.commands.append(cmd)
        handler = getattr(self, "_q_" + cmd.replace("-", "_"), None)
        if handler is None:
            return {"error": {"class": "CommandNotFound", "desc": f"The command {cmd} has not been found"}}
        result: dict[str, Any] = handler(args)
        return result

    def _ok(self, value: Any = None) -> dict[str, Any]:
        return {"return": {} if value is None else value}

    def _q_query_status(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._ok({"status": self.status, "singlestep": False, "running": self.status == "running"})

    def _q_query_cpus_fast(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._ok([{"cpu-index": 0, "qom-path": "/machine/unattached/device[0]", "thread-id": self.pid + 1,
                          "props": {"core-id": 0, "thread-id": 0, "node-id": 0, "socket-id": 0},
                          "target": "x86_64"}])

    def _q_stop(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.status == "running":
            self.status = "paused"
            self.emit("STOP", {})
        return self._ok()

    def _q_cont(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.status == "guest-panicked":
            return {"error": {"class": "GenericError", "desc": "Resetting the Virtual Machine is required"}}
        if self.status != "running":
            self.status = "running"
            self.emit("RESUME", {})
            self._run_guest()
        return self._ok()

    def _q_system_reset(self, args: dict[str, Any]) -> dict[str, Any]:
        self.phase, self.mounted = None, False
        if self.status == "guest-panicked":
            self.status = "paused"
        self.emit("RESET", {"guest": False, "reason": "host-qmp-system-reset"})
        if self.status == "running":
            self._run_guest()
        return self._ok()

    def _q_quit(self, args: dict[str, Any]) -> dict[str, Any]:
        asyncio.get_running_loop().call_soon(self.exit, "host-qmp-quit")
        return self._ok()

    def _q_system_powerdown(self, args: dict[str, Any]) -> dict[str, Any]:
        asyncio.get_running_loop().call_soon(self.exit, "guest-shutdown")
        return self._ok()

    def _q_snapshot_save(self, args: dict[str, Any]) -> dict[str, Any]:
        snaps = self._snapshots()
        snaps[str(args["tag"])] = self.phase
        self._write_snapshots(snaps)
        self.jobs[args["job-id"]] = {"id": args["job-id"], "type": "snapshot-save", "status": "concluded",
                                     "current-progress": 1, "total-progress": 1}
        return self._ok()

    def _q_snapshot_load(self, args: dict[str, Any]) -> dict[str, Any]:
        job = {"id": args["job-id"], "type": "snapshot-load", "status": "concluded",
               "current-progress": 1, "total-progress": 1}
        snaps = self._snapshots()
        tag = str(args["tag"])
        if tag not in snaps:
            job["error"] = f"Snapshot '{tag}' does not exist in one or more devices"
        else:
            self.emit("RESET", {"guest": False, "reason": "snapshot-load"})
            self.phase, self.mounted = snaps[tag], False
            if self.status == "guest-panicked":
                self.status = "paused"
        self.jobs[args["job-id"]] = job
        return self._ok()

    def _q_query_jobs(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._ok([dict(j) for j in self.jobs.values()])

    def _q_job_dismiss(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.jobs.pop(str(args["id"]), None) is None:
            return {"error": {"class": "GenericError", "desc": f"Job not found: {args['id']}"}}
        return self._ok()

    def _q_job_cancel(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._ok()

    def _q_query_named_block_nodes(self, args: dict[str, Any]) -> dict[str, Any]:
        snaps = [{"id": str(i + 1), "name": tag, "vm-state-size": 1 << 20, "date-sec": 0, "date-nsec": 0,
                  "vm-clock-sec": 1, "vm-clock-nsec": 0, "icount": -1}
                 for i, tag in enumerate(self._snapshots())]
        return self._ok([
            {"node-name": "sys", "drv": "qcow2", "ro": False, "file": str(self.sys_disk),
             "image": {"filename": str(self.sys_disk), "format": "qcow2", "virtual-size": 1 << 20,
                       "snapshots": snaps}},
            {"node-name": "data", "drv": "raw", "ro": False, "file": "data.img",
             "image": {"filename": "data.img", "format": "raw", "virtual-size": 1 << 26}}])

    # whole state: the migration stream is JSON naming the guest's phase and whether it has the disk mounted
    def _q_migrate_set_parameters(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._ok()

    def _q_migrate(self, args: dict[str, Any]) -> dict[str, Any]:
        uri = str(args["uri"])
        if not uri.startswith("exec:cat > "):
            return {"error": {"class": "GenericError", "desc": f"unknown migration protocol: {uri}"}}
        target = Path(uri.removeprefix("exec:cat > ").strip("'"))
        target.write_text(json.dumps({"phase": self.phase, "mounted": self.mounted}))
        if self.status == "running":
            self.emit("STOP", {})
        self.status, self.migration = "postmigrate", "completed"
        return self._ok()

    def _q_migrate_incoming(self, args: dict[str, Any]) -> dict[str, Any]:
        source = Path(str(args["uri"]).removeprefix("exec:cat ").strip("'"))
        try:
            state = json.loads(source.read_text())
        except (OSError, ValueError):
            self.migration = "failed"
            return self._ok()
        self.phase, self.mounted = state["phase"], state["mounted"]
        self.status, self.migration = "running", "completed"
        self.emit("RESUME", {})
        return self._ok()

    def _q_query_migrate(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.migration is None:
            return self._ok({})
        return self._ok({"status": self.migration, "total-time": 5, "downtime": 1})

    def _q_migrate_cancel(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._ok()

    def _q_chardev_change(self, args: dict[str, Any]) -> dict[str, Any]:
        self.console = Path(args["backend"]["data"]["out"])
        return self._ok()

    def _q_human_monitor_command(self, args: dict[str, Any]) -> dict[str, Any]:
        words = str(args["command-line"]).split()
        if words[:1] == ["hostfwd_add"]:
            host = int(words[2].split(":")[2].split("-")[0])
            if self.world.port_owner(host) is not None:
                return self._ok(f"Could not set up host forwarding rule '{words[2]}'\r\n")
            self.hostfwds.add(host)
            return self._ok("")
        if words[:1] == ["hostfwd_remove"]:
            port = int(words[2].split(":")[2])
            found = port in self.hostfwds
            self.hostfwds.discard(port)
            return self._ok(f"host forwarding rule for {words[2]} {'removed' if found else 'not found'}\r\n")
        if words[:2] == ["info", "usernet"]:
            rows = "".join(f"  TCP[HOST_FORWARD]   3       127.0.0.1 {port}       10.0.2.15    80     0     0\r\n"
                           for port in sorted(self.hostfwds))
            return self._ok("Hub -1 (n0):\r\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port "
                            f"RecvQ SendQ\r\n{rows}")
        return self._ok(f"unknown command: '{words[0] if words else ''}'\r\n")


class FakeWorld:
    """The host the fake QEMUs run on: processes by pid, their ports; it outlives any supervisor."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.qemus: dict[int, FakeQemu] = {}
        self.before: BeforeFn | None = None
        self.boot_stops_at: str | None = None  # guests booting from now on hang after this phase
        self._pids = itertools.count(40_000)

    def live(self) -> list[FakeQemu]:
        return [q for q in self.qemus.values() if q.alive]

    def disk_users(self) -> list[FakeQemu]:
        """The live guests that have the data disk mounted (never more than one may)."""
        return [q for q in self.live() if q.mounted]

    def by_qmp(self, path: Path) -> FakeQemu | None:
        return next((q for q in self.live() if q.qmp_path == path), None)

    def port_owner(self, port: int) -> FakeQemu | None:
        return next((q for q in self.live() if port in q.hostfwds), None)

    def spawn(self, argv: list[str]) -> FakeQemu:
        """Start a QEMU for this command line (as ``qemu-system-x86_64 -daemonize`` would)."""
        def after(flag: str) -> str:
            return argv[argv.index(flag) + 1]

        chardevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-chardev"]
        console = next(c for c in chardevs if c.startswith("file,id=console"))
        gate = next(c for c in chardevs if c.startswith("socket,id=gate"))
        sys_file = next(argv[i + 1] for i, a in enumerate(argv)
                        if a == "-blockdev" and "node-name=sys-file" in argv[i + 1])
        netdev = after("-netdev")
        ports = {int(p.split(":")[2].split("-")[0]) for p in netdev.replace(",,", "\0").split(",")
                 if p.startswith("hostfwd=")}
        for port in ports:
            if self.port_owner(port) is not None:
                raise OSError(f"Could not set up host forwarding rule 'tcp:127.0.0.1:{port}'")
        qemu = FakeQemu(self, next(self._pids), time.time(), list(argv),
                        qmp_path=Path(_unopt(after("-qmp").removeprefix("unix:"))),
                        gate_path=Path(str(_opt_value(gate, "path"))), pidfile=Path(after("-pidfile")),
                        console=Path(str(_opt_value(console, "path"))),
                        sys_disk=Path(str(_opt_value(sys_file, "filename"))), hostfwds=ports,
                        panic_action="pause" if "panic=pause" in argv else "exit")
        if "-S" in argv:
            qemu.status = "prelaunch"
        elif "-incoming" in argv:
            qemu.status = "inmigrate"
        self.qemus[qemu.pid] = qemu
        qemu.pidfile.write_text(f"{qemu.pid}\n")
        if qemu.status == "running":
            qemu._run_guest()
        return qemu

    async def settle(self) -> None:
        """Let every fake guest's pending step run (a few loop turns)."""
        for _ in range(5):
            await asyncio.sleep(_BOOT_STEP_S)

    async def close(self) -> None:
        """End every fake QEMU (a test's cleanup)."""
        for q in list(self.qemus.values()):
            q.exit()
            if q._boot is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await q._boot


class FakePin(Pin):
    """A pin on a fake QEMU (no pidfd)."""

    def __init__(self, host: FakeHost, qemu: FakeQemu) -> None:  # (no pidfd: the base's I/O is replaced)
        self.pid = qemu.pid
        self._fd = qemu.pid
        self._watching = False
        self._host = host
        self._qemu = qemu
        self._watcher: Callable[[], None] | None = None

    def kill(self) -> None:
        if self._fd < 0:
            return
        self._host._op("kill", self._qemu)
        self._qemu.exit()

    def watch(self, on_exit: Callable[[], None]) -> None:
        def fire() -> None:
            if self._watcher is fire:
                self._watcher = None
                on_exit()

        self._watcher = fire
        self._qemu._exit_watchers.append(fire)
        self._watching = True
        if not self._qemu.alive:
            asyncio.get_running_loop().call_soon(fire)

    def close(self) -> None:
        self._unwatch()
        self._fd = -1

    def _unwatch(self) -> None:
        if self._watcher is not None:
            with contextlib.suppress(ValueError):
                self._qemu._exit_watchers.remove(self._watcher)
            self._watcher = None
        self._watching = False


class FakeMonitor(Monitor):
    """The real QMP client, its socket replaced by a link to a ``FakeQemu``."""

    def __init__(self, host: FakeHost, unit: str, path: Path, *, timeout_s: float,
                 on_event: EventFn | None = None) -> None:
        super().__init__(unit, path, timeout_s=timeout_s, on_event=on_event)
        self._host = host
        self._qemu: FakeQemu | None = None

    async def _open(self, timeout_s: float) -> None:
        qemu = self._host.world.by_qmp(self.path)
        self._host._op("qmp-connect", qemu)
        if qemu is None:
            raise ConnectionRefusedError(f"no QEMU listens at {self.path}")
        self._qemu = qemu
        qemu.monitors.append(self)

    async def _send(self, cmd: str, args: dict[str, Any] | None) -> dict[str, Any]:
        qemu = self._qemu
        self._host._op("qmp", qemu, cmd)
        if qemu is None or not qemu.alive:
            raise ConnectionResetError("QEMU closed the connection")
        await asyncio.sleep(0)  # an answer comes back later, as over a socket
        return qemu.qmp(cmd, dict(args or {}))

    def _link_up(self) -> bool:
        return self._qemu is not None and self._qemu.alive and self in self._qemu.monitors

    async def _close_link(self) -> None:
        qemu, self._qemu = self._qemu, None
        if qemu is not None and self in qemu.monitors:
            qemu.monitors.remove(self)

    def _deliver(self, msg: Any) -> None:
        if not self._host.dead:
            super()._deliver(msg)

    def _fake_lost(self) -> None:
        if not self._host.dead:
            self._link_lost()


class FakeHost(QemuHost):
    """One supervisor's view of a ``FakeWorld``; the real host's logic with its I/O edge replaced."""

    def __init__(self, world: FakeWorld) -> None:
        super().__init__(binary="qemu-system-x86_64", cache_dir=world.root / "cache")
        self.world = world
        self.dead = False
        self.spawned: list[FakeQemu] = []

    def die(self) -> None:
        """This host's supervisor is killed now: nothing it does afterwards reaches the world."""
        self.dead = True

    def _op(self, op: str, qemu: FakeQemu | None, detail: str = "") -> None:
        if self.dead:
            raise SupervisorDied(op)
        if self.world.before is not None:
            self.world.before(self, op, qemu, detail)
        if self.dead:
            raise SupervisorDied(op)

    # -- processes -------------------------------------------------------------------------------------

    async def spawn(self, argv: list[str], log_path: Path, timeout_s: float) -> int:
        self._op("spawn", None)
        with open(log_path, "a") as f:  # noqa: ASYNC230 - a small local file
            f.write(f"--- {' '.join(argv)}\n")
        try:
            self.spawned.append(self.world.spawn(argv))
        except OSError as exc:
            with open(log_path, "a") as f:  # noqa: ASYNC230
                f.write(f"qemu-system-x86_64: {exc}\n")
            return 1
        return 0

    def process(self, pid: int) -> ProcInfo | None:
        qemu = self.world.qemus.get(pid)
        if qemu is None or not qemu.alive:
            return None
        return ProcInfo(pid, qemu.create_time, tuple(qemu.argv), False)

    def pin(self, pid: int) -> Pin:
        qemu = self.world.qemus.get(pid)
        if self.dead:
            raise SupervisorDied("pin")
        if qemu is None or not qemu.alive:
            raise ProcessLookupError(pid)
        return FakePin(self, qemu)

    def psutil_process(self, pid: int) -> psutil.Process | None:
        return None

    def kill_pid(self, pid: int) -> None:
        qemu = self.world.qemus.get(pid)
        if qemu is not None and not self.dead:
            qemu.exit()

    # -- sockets ---------------------------------------------------------------------------------------

    def monitor(self, unit: str, path: Path, *, timeout_s: float, on_event: EventFn | None) -> Monitor:
        return FakeMonitor(self, unit, path, timeout_s=timeout_s, on_event=on_event)

    async def knock(self, gate: Path) -> None:
        qemu = next((q for q in self.world.live() if q.gate_path == gate), None)
        self._op("knock", qemu)
        if qemu is None:
            raise ConnectionRefusedError(f"no gate at {gate}")
        qemu.knocked()

    async def http_get(self, port: int, path: str, timeout_s: float) -> bytes:
        qemu = self.world.port_owner(port)
        self._op("http", qemu)
        if qemu is None or qemu.status != "running" or qemu.phase != "service-ready":
            raise ConnectionRefusedError(f"nothing answers on 127.0.0.1:{port}")
        return b"HTTP/1.0 200 OK\r\n\r\nfake\n"

    def free_port(self) -> int:
        return 20_000 + next(self.world._pids) % 10_000

    def free_bytes(self, folder: Path) -> int | None:
        return None  # no tmpfs in the fake world: ram = "auto" is private RAM, and nothing is made in /dev/shm

    def check_port_free(self, unit: str, port: int) -> None:
        if self.world.port_owner(port) is not None:
            raise StartError(unit, "start", f"forwarded port 127.0.0.1:{port} is in use (Address already in use)")

    # -- tools -----------------------------------------------------------------------------------------

    def check_binary(self, unit: str) -> None:
        return None

    def resolve_image(self, image: str) -> images.ImageInfo:
        d = self.world.root / "image"
        return images.ImageInfo(name=image, directory=str(d), kernel=str(d / "vmlinuz"), initrd=str(d / "initrd"),
                                kernel_package="linux-image-fake", kernel_version="0", kernel_release="0-fake",
                                busybox_version="0", service_version="0", inputs_hash="fake", built_wall=0.0,
                                size_bytes=0)

    def make_sys_disk(self, unit: str, path: Path) -> None:
        path.write_text(json.dumps({"format": "fake-qcow2", "snapshots": {}}))

    def make_data_disk(self, unit: str, path: Path, size_mib: int, legacy: Path) -> None:
        if not path.exists():
            path.write_bytes(b"")

    async def choose_accel(self, wanted: str, info: images.ImageInfo) -> str:
        return "tcg"

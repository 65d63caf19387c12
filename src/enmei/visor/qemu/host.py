"""The QEMU backend's edge to the machine it runs on: processes, sockets, host tools.

Everything the QEMU backend does to the host goes through one ``QemuHost`` (and the ``Pin`` it hands
out): starting QEMU, reading a process's create time and command line, holding a pidfd to signal it,
the QMP monitor of a socket, knocking on a guest's data-disk gate, HTTP requests that warm a standby,
loopback ports, and the tools that make disks and choose the accelerator. The logic above it (the
machine, the standby, strays, whole state) is written once against these methods, so that
``enmei.visor.qemu.fake`` can answer them like a scripted QEMU in unit tests and everything else runs
as it does for real.

Promises of the real host: a ``Pin`` signals only the process it was opened on (a pidfd: never a
recycled pid); every wait is bounded by its caller's timeout; nothing here decides anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from enmei.clock import wait_for
from enmei.errors import StartError
from enmei.visor.qemu import image as images
from enmei.visor.qemu import ram
from enmei.visor.qemu.accel import accel_key, choose_accel, probe_kvm
from enmei.visor.qemu.qmp import EventFn, Monitor

__all__ = ["Pin", "ProcInfo", "QemuHost"]


@dataclass(frozen=True)
class ProcInfo:
    """What identifies a process beyond its pid."""

    pid: int
    create_time: float
    cmdline: tuple[str, ...]
    zombie: bool


class Pin:
    """A pidfd held on one process: ``kill`` reaches that process only, ``watch`` learns when it ends."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fd = os.pidfd_open(pid)
        self._watching = False

    @property
    def open(self) -> bool:
        return self._fd >= 0

    def kill(self) -> None:
        """SIGKILL; nothing if the process is already gone or the pin closed."""
        if self._fd < 0:
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._fd, signal.SIGKILL)

    def watch(self, on_exit: Callable[[], None]) -> None:
        """Call ``on_exit`` once, on the event loop, when the process has exited."""
        loop = asyncio.get_running_loop()

        def readable() -> None:
            self._unwatch()
            on_exit()

        loop.add_reader(self._fd, readable)
        self._watching = True

    async def wait_exit(self, timeout_s: float) -> bool:
        """True once the process has exited, False if it still runs after ``timeout_s``."""
        gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def exited() -> None:
            if not gone.done():
                gone.set_result(None)

        self.watch(exited)
        try:
            await wait_for(gone, timeout_s)
        except TimeoutError:
            return False
        finally:
            self._unwatch()
        return True

    def close(self) -> None:
        """Release the pidfd (the process is not touched). Never raises."""
        self._unwatch()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._fd)


class QemuHost:
    """The real host. ``binary`` is the QEMU system emulator, ``cache_dir`` where images and the
    accelerator verdict are cached, ``kvm_probe_timeout_s`` bounds the one-time KVM test boot."""

    def __init__(self, *, binary: str = "qemu-system-x86_64", cache_dir: Path | None = None,
                 kvm_probe_timeout_s: float = 20.0) -> None:
        self.binary = binary
        self.cache_dir = cache_dir
        self.kvm_probe_timeout_s = kvm_probe_timeout_s

    # -- processes -----------------------------------------------------------------------------------

    async def spawn(self, argv: list[str], log_path: Path, timeout_s: float) -> int:
        """Run QEMU (it daemonizes: the command returns once QEMU is initialized) with its output
        appended to ``log_path``; its exit code. Raises ``FileNotFoundError`` (no binary) or
        ``TimeoutError`` (it is then killed)."""
        with open(log_path, "ab") as logf:  # noqa: ASYNC230 - a local file, opened once
            logf.write(f"--- {' '.join(argv)}\n".encode())
            logf.flush()
            proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=logf, stderr=logf)
            try:
                return await wait_for(proc.wait(), timeout=timeout_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise

    def process(self, pid: int) -> ProcInfo | None:
        """The process ``pid`` now; None if there is none (or it cannot be read)."""
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                return ProcInfo(pid, proc.create_time(), tuple(proc.cmdline()),
                                proc.status() == psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return None

    def pin(self, pid: int) -> Pin:
        """A pidfd on ``pid``; ``OSError`` (``ProcessLookupError``) if there is no such process."""
        return Pin(pid)

    def psutil_process(self, pid: int) -> psutil.Process | None:
        """The process as psutil sees it, for resource statistics."""
        try:
            return psutil.Process(pid)
        except psutil.Error:
            return None

    # -- sockets ---------------------------------------------------------------------------------------

    def monitor(self, unit: str, path: Path, *, timeout_s: float, on_event: EventFn | None) -> Monitor:
        """The QMP monitor of the QEMU listening at ``path`` (not connected yet)."""
        return Monitor(unit, path, timeout_s=timeout_s, on_event=on_event)

    async def knock(self, gate: Path) -> None:
        """Write ``go`` to a guest's data-disk gate socket. Raises ``OSError`` or ``TimeoutError``."""
        _, writer = await wait_for(asyncio.open_unix_connection(str(gate)), 1.0)
        writer.write(b"go\n")
        await writer.drain()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    async def http_get(self, port: int, path: str, timeout_s: float) -> bytes:
        """``GET path`` on 127.0.0.1:``port``; the whole answer. Raises ``OSError`` or ``TimeoutError``."""
        reader, writer = await wait_for(asyncio.open_connection("127.0.0.1", port), timeout_s)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: enmei-standby\r\n\r\n".encode())
            return await wait_for(reader.read(), timeout_s)
        finally:
            writer.close()

    def free_port(self) -> int:
        """A loopback TCP port free right now."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    def free_bytes(self, folder: Path) -> int | None:
        """Bytes an unprivileged writer may still write on ``folder``'s file system (None: no such folder)."""
        return ram.free_bytes(folder)

    def check_port_free(self, unit: str, port: int) -> None:
        """Raises ``StartError`` if 127.0.0.1:``port`` is in use."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError as exc:
                raise StartError(unit, "start", f"forwarded port 127.0.0.1:{port} is in use ({exc.strerror})"
                                 ) from exc

    # -- tools -----------------------------------------------------------------------------------------

    def check_binary(self, unit: str) -> None:
        """Raises ``StartError`` (with the ``apt-get`` line) if the QEMU binary is not installed."""
        if shutil.which(self.binary) is None:
            raise StartError(unit, "start", f"{self.binary} is not installed; run: "
                             "apt-get install -y qemu-system-x86 qemu-utils")

    def resolve_image(self, image: str) -> images.ImageInfo:
        """The built image ``image``; ``ImageError`` if it is not built."""
        return images.resolve(image, cache_dir=self.cache_dir)

    def make_sys_disk(self, unit: str, path: Path) -> None:
        """A fresh, empty qcow2 for snapshots (its virtual size is irrelevant: the guest never sees it).
        Raises ``StartError``."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        try:
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "1M"], check=True,
                           capture_output=True, timeout=60)
        except FileNotFoundError as exc:
            raise StartError(unit, "start", "qemu-img is not installed; run: apt-get install -y qemu-utils"
                             ) from exc
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise StartError(unit, "start", f"qemu-img create {path} failed: {exc}") from exc

    def make_data_disk(self, unit: str, path: Path, size_mib: int, legacy: Path) -> None:
        """The unit's ext4 data disk unless it exists (``image.data_disk``). Raises ``ImageError``."""
        images.data_disk(path, size_mib, unit=unit, legacy=legacy)

    async def choose_accel(self, wanted: str, info: images.ImageInfo) -> str:
        """``tcg`` or ``kvm`` for ``wanted`` (``auto``: a bounded, cached KVM probe)."""
        async def probe() -> bool:
            return await probe_kvm(info.kernel, info.initrd, timeout_s=self.kvm_probe_timeout_s,
                                   binary=self.binary)

        root = self.cache_dir or images.cache_root()
        return await choose_accel(wanted, cache_file=root / "accel.json",
                                  key=await asyncio.to_thread(accel_key, self.binary), probe=probe)

    def kill_pid(self, pid: int) -> None:
        """SIGKILL a QEMU this host just launched that could not be attached (not watched yet; its pid
        cannot have been recycled in between). Never raises."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)

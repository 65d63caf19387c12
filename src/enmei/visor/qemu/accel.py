"""Choosing the accelerator: KVM where it really works, TCG otherwise, the answer cached on disk.

A ``/dev/kvm`` that opens is not enough: on some hosts a KVM guest aborts (``-cpu host``: "failed to
set MSR") or hangs right after the firmware. So ``accel = "auto"`` runs a bounded test boot of the
image under KVM (``probe_kvm``) and keeps KVM only if the guest's init printed its first phase
marker in time. The verdict is cached in ``<cache>/accel.json`` under a key made of the QEMU version,
the host kernel release and the identity of ``/dev/kvm``, so it is probed again only when one of
those changes. ``tcg`` and ``kvm`` are taken as given, without a probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from enmei.clock import wait_for

__all__ = ["ProbeFn", "accel_key", "choose_accel", "probe_kvm"]

ProbeFn = Callable[[], Awaitable[bool]]
_KVM = Path("/dev/kvm")


def accel_key(binary: str = "qemu-system-x86_64", kvm: Path = _KVM) -> str:
    """What the probe's verdict depends on: QEMU's version, the host kernel, /dev/kvm itself."""
    try:
        version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10,
                                 check=False).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        version = "?"
    try:
        st = kvm.stat()
        dev = f"{st.st_rdev}:{st.st_ino}"
    except OSError:
        dev = "none"
    raw = json.dumps([version, platform.release(), dev])
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


async def choose_accel(requested: str, *, cache_file: Path, key: str, probe: ProbeFn,
                       kvm: Path = _KVM) -> str:
    """``tcg`` or ``kvm`` for a unit that asked for ``requested`` (auto, tcg or kvm).

    For ``auto``: TCG if ``kvm`` cannot be opened read-write; else the cached verdict for ``key``;
    else ``await probe()`` (True = KVM works), whose verdict is then cached. Never raises for a
    broken cache file: it is rewritten.
    """
    if requested in ("tcg", "kvm"):
        return requested
    if not os.access(kvm, os.R_OK | os.W_OK):
        return "tcg"
    cache: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError, TypeError):
        loaded = json.loads(cache_file.read_text())  # noqa: ASYNC240 - a tiny local file
        if isinstance(loaded, dict):
            cache = {str(k): str(v) for k, v in loaded.items()}
    if cache.get(key) in ("tcg", "kvm"):
        return cache[key]
    verdict = "kvm" if await probe() else "tcg"
    cache[key] = verdict
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(cache_file.name + ".tmp")
    tmp.write_text(json.dumps(cache, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, cache_file)
    return verdict


async def probe_kvm(kernel: str, initrd: str, *, timeout_s: float = 20.0,
                    binary: str = "qemu-system-x86_64") -> bool:
    """Boot the image under KVM with the service disabled; True if the guest's init printed its
    ``kernel`` marker within ``timeout_s``. The test QEMU is always killed; never raises."""
    with tempfile.TemporaryDirectory(prefix="enmei-kvm-probe-") as tmp:
        console = Path(tmp) / "console.log"
        argv = [binary, "-machine", "pc", "-accel", "kvm", "-cpu", "host", "-m", "128",
                "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-kernel", kernel, "-initrd", initrd,
                "-append", "console=ttyS0 quiet panic=-1 enmei.noservice=1",
                "-serial", f"file:{console}"]
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL,
                                                        stdout=subprocess.DEVNULL,
                                                        stderr=subprocess.DEVNULL)
        except OSError:
            return False
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        ok = False
        try:
            while loop.time() < end and proc.returncode is None:
                with contextlib.suppress(OSError):
                    if b"enmei-phase: kernel" in console.read_bytes():
                        ok = True
                        break
                with contextlib.suppress(TimeoutError):
                    await wait_for(proc.wait(), timeout=0.1)
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        return ok

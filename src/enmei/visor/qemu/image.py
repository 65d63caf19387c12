"""Guest images built from Debian packages only: ``build`` makes one, ``resolve`` finds one.

An image is a directory in the user's cache (``$XDG_CACHE_HOME/enmei/images`` or
``~/.cache/enmei/images``) holding:

* ``vmlinuz`` — the kernel, unpacked (``apt-get download`` + ``dpkg -x``, never installed) from the
  ``linux-image-*`` package that ``linux-image-amd64`` depends on;
* ``initrd.img`` — a gzip'd newc initramfs made here: the static busybox of the host's
  ``busybox-static`` package as init and userland, the kernel modules the guest needs (virtio
  net/block, pvpanic, ext4, ACPI button, evdev) with their dependencies, the init scripts that print
  the phase markers ``kernel``, ``userspace``, ``network``, ``service-ready`` (then ``data-ready``)
  on the serial console, and the demo HTTP service (busybox httpd + CGI scripts: a version string and
  fault knobs for leak, latency, hang and kernel panic) — see ``guest/``;
* ``image.json`` — an ``ImageInfo``.

The directory is named ``NAME-HASH`` where HASH covers every input (package versions, the busybox
binary, the guest scripts, the module list, the service version, the layout version), and
``NAME.json`` beside it points at the newest: a build with unchanged inputs returns at once, and
older versions stay in place for units still running from them. The writable data disk is not part of
the image: the backend makes one per unit (``data_disk``).

Failures raise ``ImageError``; a missing host package raises ``MissingToolError`` whose message holds
the exact ``apt-get install`` command. A failed build leaves the previous image untouched.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from enmei.visor.cage import caged_argv
from enmei.visor.qemu.cpio import CpioWriter
from enmei.visor.qemu.errors import ImageError, MissingToolError

__all__ = [
    "GUEST_MODULES",
    "ImageInfo",
    "ProgressFn",
    "build",
    "cache_root",
    "data_disk",
    "images_dir",
    "list_images",
    "resolve",
]

# Bump when the layout of the initramfs changes in a way the inputs below do not show.
_LAYOUT = 3
_META_PACKAGE = "linux-image-amd64"
_BUSYBOX = Path("/bin/busybox")
# Kernel modules the guest loads (in this order, after their dependencies).
GUEST_MODULES = ("virtio_pci", "virtio_net", "virtio_blk", "pvpanic_mmio", "button", "evdev",
                 "crc32c_generic", "ext4")
_CMD_TIMEOUT_S = 600.0

ProgressFn = Callable[[str, float, float], None]
"""``progress(description, completed, total)``: the build's progress in work units out of ``total``."""

_TOTAL = 100.0
_STEPS = {"resolve": (0.0, 2.0), "download": (2.0, 60.0), "unpack": (62.0, 20.0),
          "initramfs": (82.0, 16.0), "finish": (98.0, 2.0)}


@dataclass(frozen=True)
class ImageInfo:
    """A built guest image: where its files are and what went into it."""

    name: str
    directory: str
    kernel: str
    initrd: str
    kernel_package: str
    kernel_version: str  # the Debian package version
    kernel_release: str  # ``uname -r`` inside the guest
    busybox_version: str
    service_version: str
    inputs_hash: str
    built_wall: float
    size_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"format": 1, **asdict(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageInfo:
        fields = {k: data[k] for k in cls.__dataclass_fields__}
        return cls(**fields)


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/enmei``, else ``~/.cache/enmei``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "enmei"


def images_dir(cache_dir: Path | None = None) -> Path:
    return (cache_dir or cache_root()) / "images"


def resolve(image: str, *, cache_dir: Path | None = None) -> ImageInfo:
    """The image named ``image`` (its newest build), or the image directory at path ``image``.

    Raises ``ImageError`` (naming ``enmei image build``) if there is none or its files are gone.
    """
    path = Path(image).expanduser()
    if "/" in image and (path / "image.json").is_file():
        info = _load(path / "image.json", image)
    else:
        pointer = images_dir(cache_dir) / f"{image}.json"
        if not pointer.is_file():
            raise ImageError(image, "resolve",
                             f"no image named {image!r} in {images_dir(cache_dir)}; "
                             f"run: enmei image build --name {image}")
        info = _load(pointer, image)
    for f in (info.kernel, info.initrd):
        if not Path(f).is_file():
            raise ImageError(image, "resolve", f"{f} is missing; run: enmei image build --name {info.name}")
    return info


def list_images(cache_dir: Path | None = None) -> list[ImageInfo]:
    """Every built image version in the cache, newest first (unreadable ones are skipped)."""
    out: list[ImageInfo] = []
    root = images_dir(cache_dir)
    if not root.is_dir():
        return out
    for meta in root.glob("*/image.json"):
        with contextlib.suppress(ImageError):
            out.append(_load(meta, meta.parent.name))
    return sorted(out, key=lambda i: i.built_wall, reverse=True)


def build(name: str = "default", *, cache_dir: Path | None = None, kernel_package: str | None = None,
          service_version: str = "1.0", force: bool = False,
          progress: ProgressFn | None = None, specimens: bool = False) -> ImageInfo:
    """Build image ``name`` (or return the cached one if no input changed and ``force`` is false).

    ``kernel_package`` overrides the ``linux-image-*`` package (default: what ``linux-image-amd64``
    depends on). ``progress`` is called with the build's progress out of 100 work units.
    ``specimens`` makes a *test* image: it also holds ``guest/specimens/`` (harmless keyloggers, a bot
    and benign workloads for ``enmei bench malware``), each inert unless the kernel command line names
    it (``enmei.specimen=NAME``); an image without it is byte for byte what it was before.
    Raises ``MissingToolError`` if busybox-static (or apt/dpkg) is missing, ``ImageError`` for the
    rest (no kernel package known to apt, a failed download...). Needs network access to a Debian
    mirror only when the kernel package is not yet in the cache.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise ImageError(name, "build", "an image name is letters, digits, '_', '.', '-'")
    report = _Progress(progress)
    root = images_dir(cache_dir)
    debs = root / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    report.step("resolve", "checking host packages", 0.0)
    busybox_version = _check_busybox(name)
    for tool, pkg in (("dpkg-deb", "dpkg"), ("apt-get", "apt")):
        if shutil.which(tool) is None:
            raise MissingToolError(name, "build", tool, [pkg])
    pkg, version, size = _kernel_package(name, kernel_package, debs)
    inputs = _inputs(pkg, version, busybox_version, service_version, specimens)
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    target = root / f"{name}-{digest[:16]}"
    pointer = root / f"{name}.json"
    if not force and (target / "image.json").is_file():
        with contextlib.suppress(ImageError):
            info = resolve(str(target), cache_dir=cache_dir)
            if info.inputs_hash == digest:
                _write_json(pointer, info.to_json())
                report.step("finish", "up to date", 1.0)
                return info
    deb = _download(name, pkg, version, size, debs, report)
    with tempfile.TemporaryDirectory(prefix="enmei-image-", dir=root) as tmp:
        work = Path(tmp)
        report.step("unpack", f"unpacking {deb.name}", 0.0)
        unpacked = work / "root"
        _run(name, "unpack", ["dpkg-deb", "-x", str(deb), str(unpacked)])
        report.step("unpack", f"unpacked {deb.name}", 1.0)
        release, vmlinuz = _kernel_files(name, unpacked)
        report.step("initramfs", "making the initramfs", 0.0)
        modules = _collect_modules(name, unpacked / "lib/modules" / release, GUEST_MODULES)
        kmods: dict[str, bytes] = {}
        if specimens:  # the test-only kernel modules, built against this very kernel's headers
            from enmei.visor.qemu import kmods as specimen_kmods

            report.step("initramfs", "building the specimen kernel modules", 0.2)
            kmods = specimen_kmods.build(
                name, release, version, work,
                lambda p, v, size: _download(name, p, v, size, debs, _Progress(None)),
                lambda cmd, cwd: _run(name, "kernel modules", cmd, cwd=cwd))
        initrd = _initramfs(modules, service_version, digest, specimens, kmods)
        report.step("initramfs", "compressing the initramfs", 0.5)
        staged = work / "image"
        staged.mkdir()
        shutil.copyfile(vmlinuz, staged / "vmlinuz")
        (staged / "initrd.img").write_bytes(gzip.compress(initrd, compresslevel=6, mtime=0))
        report.step("finish", "writing", 0.0)
        info = ImageInfo(
            name=name, directory=str(target), kernel=str(target / "vmlinuz"),
            initrd=str(target / "initrd.img"), kernel_package=pkg, kernel_version=version,
            kernel_release=release, busybox_version=busybox_version, service_version=service_version,
            inputs_hash=digest, built_wall=time.time(),
            size_bytes=sum(p.stat().st_size for p in staged.iterdir()))
        _write_json(staged / "image.json", info.to_json())
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    _write_json(pointer, info.to_json())
    report.step("finish", "done", 1.0)
    return info


def data_disk(path: Path, size_mib: int, *, unit: str = "?", legacy: Path | None = None) -> None:
    """Create an empty ext4 data disk (a raw, sparse file) of ``size_mib`` at ``path`` unless it exists.

    The file system is made on the host (``mkfs.ext4`` from e2fsprogs, with a journal so that a
    guest that panics leaves a disk the kernel repairs on the next mount). If ``legacy`` (a qcow2
    data disk of an earlier enmei) exists instead, it is converted to raw and removed. Raises
    ``MissingToolError`` if qemu-img or mkfs.ext4 is missing, ``ImageError`` if a step fails; a
    half-made disk is removed.
    """
    if path.exists():
        return
    for tool, pkg in (("qemu-img", "qemu-utils"), ("mkfs.ext4", "e2fsprogs")):
        if shutil.which(tool) is None and not Path("/sbin", tool).exists():
            raise MissingToolError(unit, "data disk", tool, [pkg])
    mkfs = shutil.which("mkfs.ext4") or "/sbin/mkfs.ext4"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        if legacy is not None and legacy.exists():
            _run(unit, "data disk", ["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", str(legacy),
                                     str(tmp)])
            os.replace(tmp, path)
            legacy.unlink()
            return
        with open(tmp, "wb") as f:
            f.truncate(size_mib * 2**20)
        _run(unit, "data disk", [mkfs, "-q", "-F", "-L", "enmei-data", "-E", "nodiscard", str(tmp)])
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


# -- steps ----------------------------------------------------------------------------------------


class _Progress:
    def __init__(self, fn: ProgressFn | None) -> None:
        self.fn = fn

    def step(self, step: str, description: str, fraction: float) -> None:
        if self.fn is not None:
            start, width = _STEPS[step]
            self.fn(description, start + width * min(1.0, max(0.0, fraction)), _TOTAL)


def _check_busybox(name: str) -> str:
    """The installed busybox-static version; ``MissingToolError`` if it (or a static busybox) is absent."""
    version = _dpkg_version("busybox-static")
    if version is None or not _BUSYBOX.is_file() or not _is_static(_BUSYBOX):
        raise MissingToolError(name, "build", "busybox-static", ["busybox-static"])
    return version


def _dpkg_version(package: str) -> str | None:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Status}|${Version}", package],
                             capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    status, _, version = out.stdout.partition("|")
    return version if out.returncode == 0 and status.endswith(" installed") else None


def _is_static(path: Path) -> bool:
    """Whether an ELF file has no program interpreter (PT_INTERP), i.e. is statically linked."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit only
        return False
    phoff = int.from_bytes(data[32:40], "little")
    phentsize = int.from_bytes(data[54:56], "little")
    phnum = int.from_bytes(data[56:58], "little")
    for i in range(phnum):
        if int.from_bytes(data[phoff + i * phentsize: phoff + i * phentsize + 4], "little") == 3:
            return False
    return True


def _kernel_package(name: str, override: str | None, debs: Path) -> tuple[str, str, int]:
    """(package, version, size in bytes) of the kernel to use, from apt (or the newest cached deb)."""
    pkg = override
    if pkg is None:
        deps = _apt(["apt-cache", "depends", _META_PACKAGE])
        found = re.findall(r"Depends:\s*(linux-image-[\w.+-]+)", deps or "")
        pkg = found[0] if found else None
    if pkg is not None:
        show = _apt(["apt-cache", "show", "--no-all-versions", pkg]) or ""
        version = re.search(r"^Version:\s*(\S+)", show, re.M)
        size = re.search(r"^Size:\s*(\d+)", show, re.M)
        if version:
            return pkg, version.group(1), int(size.group(1)) if size else 0
    cached = sorted(debs.glob(f"{pkg or 'linux-image-'}*_amd64.deb"), key=lambda p: p.stat().st_mtime)
    if cached:  # offline, but downloaded before
        pkg_name, cached_version, _ = cached[-1].name.split("_", 2)
        return pkg_name, cached_version.replace("%3a", ":"), cached[-1].stat().st_size
    what = pkg or f"the kernel package {_META_PACKAGE} depends on"
    raise ImageError(name, "build", f"apt knows no version of {what}; run: apt-get update")


def _apt(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError:
        return None
    except subprocess.TimeoutExpired:
        return None
    return out.stdout if out.returncode == 0 else None


def _download(name: str, pkg: str, version: str, size: int, debs: Path, report: _Progress) -> Path:
    """The package's .deb in ``debs``, downloaded with ``apt-get download`` unless already there."""
    filename = f"{pkg}_{version.replace(':', '%3a')}_amd64.deb"
    deb = debs / filename
    if not deb.is_file() and (debs / filename.replace("_amd64.deb", "_all.deb")).is_file():
        deb = debs / filename.replace("_amd64.deb", "_all.deb")  # an architecture-independent package
    if deb.is_file() and (size == 0 or deb.stat().st_size == size):
        report.step("download", f"{filename} (cached)", 1.0)
        return deb
    report.step("download", f"downloading {pkg} {version}", 0.0)
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.2):
            got = max((p.stat().st_size for p in _files_like(debs, pkg)), default=0)
            if size:
                report.step("download", f"downloading {pkg} {version}", got / size)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        _run(name, "download", ["apt-get", "download", "-q", f"{pkg}={version}"], cwd=debs,
             hint="check access to a Debian mirror, or run: apt-get update")
    finally:
        stop.set()
        watcher.join()
    if not deb.is_file():
        deb = debs / filename.replace("_amd64.deb", "_all.deb")
    if not deb.is_file():
        raise ImageError(name, "download", f"apt-get download did not leave {debs / filename}")
    report.step("download", f"downloaded {filename}", 1.0)
    return deb


def _files_like(folder: Path, prefix: str) -> Iterator[Path]:
    for p in folder.rglob(f"{prefix}*"):
        with contextlib.suppress(OSError):
            if p.is_file():
                yield p


def _kernel_files(name: str, unpacked: Path) -> tuple[str, Path]:
    releases = sorted(p.name for p in (unpacked / "lib/modules").iterdir()) if (
        unpacked / "lib/modules").is_dir() else []
    if len(releases) != 1:
        raise ImageError(name, "unpack", f"expected one kernel release in the package, found {releases}")
    vmlinuz = unpacked / "boot" / f"vmlinuz-{releases[0]}"
    if not vmlinuz.is_file():
        raise ImageError(name, "unpack", f"no {vmlinuz.name} in the package")
    return releases[0], vmlinuz


def _collect_modules(name: str, moddir: Path, wanted: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """(file name, contents) of the ``wanted`` modules and their dependencies, in load order."""
    index: dict[str, Path] = {}
    for ko in moddir.rglob("*.ko"):
        index[ko.stem.replace("-", "_")] = ko
    order: list[str] = []
    seen: set[str] = set()

    def visit(mod: str, chain: tuple[str, ...]) -> None:
        if mod in seen:
            return
        if mod not in index:
            raise ImageError(name, "modules", f"module {mod} (needed by {' <- '.join(chain) or 'the guest'})"
                             " is not in the kernel package")
        seen.add(mod)
        for dep in _depends(index[mod].read_bytes()):
            visit(dep, (mod, *chain))
        order.append(mod)

    for mod in wanted:
        visit(mod, ())
    return [(index[m].name, index[m].read_bytes()) for m in order]


def _depends(ko: bytes) -> list[str]:
    """The ``depends=`` list of a module's .modinfo."""
    m = re.search(rb"\0depends=([^\0]*)\0", ko)
    if not m or not m.group(1):
        return []
    return [d.decode().replace("-", "_") for d in m.group(1).split(b",") if d]


def _guest_scripts(specimens: bool = False) -> dict[str, bytes]:
    """The guest's scripts shipped in ``guest/`` (path relative to it -> contents); ``specimens/`` only
    for a test image."""
    base = resources.files("enmei.visor.qemu") / "guest"
    out: dict[str, bytes] = {}
    for top in base.iterdir():
        if top.is_file() and top.name.endswith(".sh"):
            out[top.name] = top.read_bytes()
        elif top.is_dir() and (specimens or top.name != "specimens"):
            for f in top.iterdir():
                if f.is_file() and f.name.endswith(".sh"):
                    out[f"{top.name}/{f.name}"] = f.read_bytes()
    return out


def _inputs(pkg: str, version: str, busybox_version: str, service_version: str,
            specimens: bool = False) -> dict[str, Any]:
    scripts = _guest_scripts(specimens)
    extra: dict[str, Any] = {"specimens": True} if specimens else {}  # absent: the hash of a plain image stays
    if specimens:
        from enmei.visor.qemu.kmods import sources_digest

        extra["kmods"] = sources_digest()
    return {
        **extra,
        "layout": _LAYOUT,
        "kernel": [pkg, version],
        "busybox": [busybox_version, hashlib.sha256(_BUSYBOX.read_bytes()).hexdigest()],
        "modules": list(GUEST_MODULES),
        "scripts": {k: hashlib.sha256(v).hexdigest() for k, v in sorted(scripts.items())},
        "service_version": service_version,
    }


_INITTAB = """\
# busybox init of the enmei demo guest
::sysinit:/etc/enmei/rc.sh
::shutdown:/etc/enmei/down.sh
"""


def _initramfs(modules: list[tuple[str, bytes]], service_version: str, digest: str,
               specimens: bool = False, kmods: Mapping[str, bytes] | None = None) -> bytes:
    """The uncompressed newc archive of the guest's root file system."""
    scripts = _guest_scripts(specimens)
    w = CpioWriter()
    for d in ("bin", "dev", "etc", "etc/enmei", "etc/acpi", "etc/acpi/PWRF", "lib", "lib/modules",
              "proc", "sys", "run", "tmp", "data", "www", "www/cgi-bin", "root"):
        w.directory(d)
    w.char_device("dev/console", 5, 1)
    w.char_device("dev/null", 1, 3, mode=0o666)
    w.file("bin/busybox", _BUSYBOX.read_bytes(), mode=0o755)
    for applet in _applets():
        if f"bin/{applet}" not in w:
            w.symlink(f"bin/{applet}", "busybox")
    w.symlink("init", "bin/busybox")
    w.symlink("sbin", "bin")
    w.symlink("usr", ".")
    if specimens:
        w.directory("etc/enmei/specimens")
        w.directory("etc/enmei/specimens/kmod")
        for fn, data in sorted((kmods or {}).items()):
            w.file(f"etc/enmei/specimens/kmod/{fn}", data)
        # after sysinit (rc.sh, then gate.sh until the data disk is mounted): what the cmdline names
        w.file("etc/inittab", (_INITTAB + "::once:/etc/enmei/specimens/start.sh\n").encode())
    else:
        w.file("etc/inittab", _INITTAB.encode())
    w.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    w.file("etc/group", b"root:x:0:\n")
    w.file("etc/enmei/version", f"{service_version} ({digest[:12]})\n".encode())
    w.file("etc/enmei/modules", "".join(f"{fn}\n" for fn, _ in modules).encode())
    for fn, data in modules:
        w.file(f"lib/modules/{fn}", data)
    for rel, data in sorted(scripts.items()):
        if rel.startswith("cgi/"):
            w.file(f"www/cgi-bin/{Path(rel).stem}", data, mode=0o755)
        else:
            w.file(f"etc/enmei/{rel}", data, mode=0o755)
    w.symlink("etc/acpi/PWRF/00000080", "/etc/enmei/power.sh")
    w.file("www/index.html", b"<p>enmei demo guest: <a href=/cgi-bin/app>/cgi-bin/app</a></p>\n")
    return w.finish()


def _applets() -> list[str]:
    out = subprocess.run([str(_BUSYBOX), "--list"], capture_output=True, text=True, timeout=30, check=True)
    return [a for a in out.stdout.split() if re.fullmatch(r"[\w.\[\]-]+", a)]


# -- helpers --------------------------------------------------------------------------------------


def _run(name: str, action: str, cmd: list[str], *, cwd: Path | None = None, hint: str = "") -> None:
    try:
        out = subprocess.run(caged_argv(cmd), cwd=cwd, capture_output=True, text=True, timeout=_CMD_TIMEOUT_S,
                             check=False, stdin=subprocess.DEVNULL)  # in the helper cage, if there is one
    except FileNotFoundError as exc:
        raise ImageError(name, action, f"{cmd[0]} not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise ImageError(name, action, f"{' '.join(cmd)} took more than {_CMD_TIMEOUT_S:.0f} s") from exc
    if out.returncode != 0:
        tail = " ".join((out.stderr or out.stdout).strip().splitlines()[-3:])
        raise ImageError(name, action, f"{' '.join(cmd)} exited {out.returncode}: {tail}"
                         + (f"; {hint}" if hint else ""))


def _load(meta: Path, label: str) -> ImageInfo:
    try:
        return ImageInfo.from_json(json.loads(meta.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ImageError(label, "resolve", f"{meta} is unreadable ({exc}); rebuild it") from exc


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)

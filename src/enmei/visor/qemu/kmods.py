"""Test-only kernel modules for the test image (``enmei image build --specimens``), built against its kernel.

The sources are ``guest/specimens/kmod/*.c`` (stand-ins for kernel rootkits, issue 17: ``cv_hide_task``
unlinks a process from the task list, ``cv_hide_self`` removes itself from the module list;
``cv_benign`` does nothing, for module load/unload churn). They are compiled with the kernel's own
build tree: Debian's ``linux-headers-RELEASE``, ``linux-headers-…-common`` and ``linux-kbuild-X.Y``
of the *same version* as the image's kernel package, downloaded with ``apt-get download`` into the
image cache's ``debs/`` and unpacked into a temporary folder (nothing is installed on the host). The
headers' ``Makefile`` names its ``-common`` tree by absolute path; it is pointed at the unpacked one.
A build takes about 4 s here; the image cache keeps the result (the sources are image inputs).

Needs ``make`` and the compiler the kernel was built with (``gcc-12`` for Debian 12's): else
``MissingToolError``. Any other failure (no such headers package, a compile error) is ``ImageError``
with the tail of the output.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from enmei.visor.qemu.errors import ImageError, MissingToolError

__all__ = ["build", "header_packages", "sources", "sources_digest"]

#: (package, version, size) -> the .deb's path; the image builder's downloader
Download = Callable[[str, str, int], Path]
Run = Callable[[list[str], Path], None]


def sources() -> dict[str, bytes]:
    """The module sources shipped with enmei (file name -> contents)."""
    base = resources.files("enmei.visor.qemu") / "guest" / "specimens" / "kmod"
    return {f.name: f.read_bytes() for f in base.iterdir() if f.is_file() and f.name.endswith(".c")}


def sources_digest() -> str:
    h = hashlib.sha256()
    for name, data in sorted(sources().items()):
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


def header_packages(release: str) -> list[str]:
    """The Debian packages of the build tree of kernel ``release`` (``6.1.0-57-amd64``).

    >>> header_packages("6.1.0-57-amd64")
    ['linux-headers-6.1.0-57-amd64', 'linux-headers-6.1.0-57-common', 'linux-kbuild-6.1']
    """
    m = re.fullmatch(r"((\d+)\.(\d+)\.\d+-\d+)-[\w]+", release)
    if m is None:
        raise ValueError(f"kernel release {release!r} is not a Debian one (X.Y.Z-N-FLAVOUR)")
    return [f"linux-headers-{release}", f"linux-headers-{m.group(1)}-common", f"linux-kbuild-{m.group(2)}.{m.group(3)}"]


def build(name: str, release: str, version: str, work: Path, download: Download, run: Run) -> dict[str, bytes]:
    """The ``.ko`` files (file name -> contents) built in ``work`` for kernel ``release`` of package
    version ``version``. See the module docstring for what it needs and raises."""
    for tool, pkg in (("make", "make"), ("gcc-12", "gcc-12")):
        if shutil.which(tool) is None:
            raise MissingToolError(name, "kernel modules", tool, [pkg])
    try:
        packages = header_packages(release)
    except ValueError as exc:
        raise ImageError(name, "kernel modules", str(exc)) from exc
    tree = work / "headers"
    for pkg in packages:
        deb = download(pkg, version, 0)
        run(["dpkg-deb", "-x", str(deb), str(tree)], work)
    build_dir = tree / "usr/src" / f"linux-headers-{release}"
    makefile = build_dir / "Makefile"
    if not makefile.is_file():
        raise ImageError(name, "kernel modules", f"{packages[0]} has no {makefile.relative_to(tree)}")
    # "include /usr/src/linux-headers-…-common/Makefile": the unpacked tree, not the host's
    text = makefile.read_text()
    makefile.write_text(re.sub(r"(?m)^include /usr/src/", f"include {tree}/usr/src/", text))
    src = work / "kmod"
    src.mkdir()
    objs = []
    for fname, data in sorted(sources().items()):
        (src / fname).write_bytes(data)
        objs.append(Path(fname).stem + ".o")
    (src / "Kbuild").write_text(f"obj-m := {' '.join(objs)}\n")
    run(["make", "-C", str(build_dir), f"M={src}", "modules"], work)
    out: dict[str, bytes] = {}
    for obj in objs:
        ko = src / (obj[:-2] + ".ko")
        if not ko.is_file():
            raise ImageError(name, "kernel modules", f"make left no {ko.name}")
        out[ko.name] = ko.read_bytes()
    return out

"""VM Shadow (issue 17): the guest's file system rebuilt on the host, out of the guest's reach, and checked there
by an existing integrity tool, AIDE, against a baseline of the image as built.

The shadow tree of a guest of enmei's image is what its file system is made of:

* its root: the image's initramfs (the guest's root lives in its RAM, not on a disk: the shadow takes
  it from the image it booted, so a change the guest makes to its running root is *not* seen here);
* ``/data``: its data disk, from a crash-consistent copy taken while the guest is paused
  (``QemuBackend.copy_data_disk``), its ext4 journal replayed on the copy (``e2fsck``), then dumped
  into the tree with ``debugfs rdump`` — read as a file, never mounted, nothing of the guest runs.

``VmShadow.baseline()`` runs ``aide --init`` over the tree of the image as built (its initramfs and an
empty data disk), once per image (cached by the initramfs's sha256 under the cache's ``vmshadow/``).
``scan(copy)`` rebuilds the tree from a disk copy and runs ``aide --check`` against that baseline: every
file added, removed or changed (type, permissions, owner, size, sha256) is a ``ShadowFinding``, except
the service's own data files at the top of ``/data`` (``data_ignore``: they change by design).

Why AIDE and not chkrootkit: measured on the image's pristine tree, ``chkrootkit -r`` takes 8 s and
calls every busybox applet it checks ``INFECTED`` (its string signatures match busybox's multi-call
binary), and its checks look at root-relative system paths, which here come from the image, never
from the guest. rkhunter needs the same and more of the host.

Failures never raise from ``scan``: a missing tool, a disk that cannot be read, AIDE failing, a
timeout give a ``ShadowScan`` with ``reason`` set (inconclusive), never findings.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DATA_IGNORE", "ShadowFinding", "ShadowScan", "VmShadow", "parse_aide"]

#: The service's and the test workloads' own data files at the top of /data: they change by design.
DATA_IGNORE = ("app.log", "notes.txt", "cache.bin", "backup.bin", "lost+found")
_TOOL_TIMEOUT_S = 120.0
_SECTIONS = {"Added entries:": "added", "Removed entries:": "removed", "Changed entries:": "changed"}
_ENTRY = re.compile(r"^[a-zA-Z!?-][^:]*:\s(/.*)$")  # "f > ... mc  H     : /bin/busybox", "d+++…+: /data/bin"


@dataclass(frozen=True)
class ShadowFinding:
    """One difference from the baseline: ``what`` is ``added``, ``removed`` or ``changed``; ``path`` in the
    guest's file system."""

    tool: str
    what: str
    path: str

    def to_json(self) -> dict[str, str]:
        return {"tool": self.tool, "what": self.what, "path": self.path}


@dataclass(frozen=True)
class ShadowScan:
    """What one scan found; ``reason`` says why it is inconclusive (else ""); ``seconds`` per step."""

    findings: tuple[ShadowFinding, ...]
    seconds: dict[str, float] = field(default_factory=dict)
    reason: str = ""

    @property
    def conclusive(self) -> bool:
        return not self.reason


def parse_aide(report: str) -> list[tuple[str, str]]:
    """``(what, path)`` for each entry of an AIDE check report's summary sections.

    >>> parse_aide("Root prefix: /x\\nAdded entries:\\n----\\n\\nf++++++++++++++++: /data/bin/ls\\n\\n----\\n"
    ...            "Changed entries:\\n----\\n\\nf > ... mc  H     : /bin/busybox\\n")
    [('added', '/data/bin/ls'), ('changed', '/bin/busybox')]
    """
    out: list[tuple[str, str]] = []
    section = ""
    for line in report.splitlines():
        s = line.strip()
        if s in _SECTIONS:
            section = _SECTIONS[s]
            continue
        if s.startswith("Detailed information") or s.startswith("The attributes of"):
            section = ""
            continue
        m = _ENTRY.match(line)
        if section and m:
            out.append((section, m.group(1)))
    return out


class VmShadow:
    """The shadow of guests of one image (``initrd``: its initramfs); ``cache`` holds the baseline."""

    def __init__(self, initrd: Path, cache: Path, *, data_ignore: Iterable[str] = DATA_IGNORE,
                 timeout_s: float = _TOOL_TIMEOUT_S) -> None:
        self.initrd = initrd
        self.data_ignore = tuple(data_ignore)
        self.timeout_s = timeout_s
        digest = hashlib.sha256(initrd.read_bytes()).hexdigest()
        self.dir = cache / "vmshadow" / digest[:16]
        self.base_db = self.dir / "aide.db.gz"

    # -- steps ------------------------------------------------------------------------------------

    def _run(self, cmd: list[str], *, ok: tuple[int, ...] = (0,), cwd: Path | None = None,
             stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        if shutil.which(cmd[0]) is None and not Path("/sbin", cmd[0]).exists():
            raise _Inconclusive(f"{cmd[0]} is not installed")
        exe = shutil.which(cmd[0]) or str(Path("/sbin", cmd[0]))
        try:
            out = subprocess.run([exe, *cmd[1:]], capture_output=True, timeout=self.timeout_s, check=False, cwd=cwd,
                                 input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise _Inconclusive(f"{cmd[0]} took more than {self.timeout_s:.0f} s") from exc
        if out.returncode not in ok:
            tail = " ".join((out.stderr or out.stdout).decode(errors="replace").strip().splitlines()[-3:])
            raise _Inconclusive(f"{cmd[0]} exited {out.returncode}: {tail}")
        return out

    def _root(self, tree: Path) -> None:
        """The image's initramfs unpacked at ``tree`` (cpio, no device nodes: not needed, and not as root)."""
        tree.mkdir(parents=True, exist_ok=True)
        raw = gzip.decompress(self.initrd.read_bytes())
        self._run(["cpio", "-idm", "--quiet", "--no-absolute-filenames", "--nonmatching", "dev/*"], cwd=tree,
                  stdin=raw)
        (tree / "data").mkdir(exist_ok=True)
        (tree / "data" / "lost+found").mkdir(exist_ok=True)

    def _data(self, copy: Path, tree: Path) -> None:
        """The data disk copy ``copy`` (its journal replayed) dumped into ``tree/data``."""
        self._run(["e2fsck", "-f", "-y", str(copy)], ok=(0, 1))  # 1: fixed (the journal replayed)
        data = tree / "data"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir()
        self._run(["debugfs", "-R", f"rdump / {data}", str(copy)])

    def _config(self, tree: Path, db_in: Path, db_out: Path) -> Path:
        lines = [f"database_in=file:{db_in}", f"database_out=file:{db_out}", f"root_prefix={tree}",
                 "report_url=stdout", "gzip_dbout=yes",
                 # what a tampered file changes; not inode, ctime or mtime (a rebuilt tree has new ones)
                 "Shadow = p+u+g+s+ftype+sha256+l", "/ Shadow", "!/proc", "!/sys", "!/dev"]
        lines += [f"!/data/{re.escape(name)}$" for name in self.data_ignore]
        conf = tree.parent / "aide.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    # -- API --------------------------------------------------------------------------------------

    def baseline(self) -> Path:
        """The AIDE database of the image as built (taken once, then cached); ``RuntimeError`` with the
        reason if it cannot be made."""
        if self.base_db.is_file():
            return self.base_db
        self.dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="enmei-vmshadow-", dir=self.dir) as tmp:
            tree = Path(tmp) / "tree"
            try:
                self._root(tree)
                new = Path(tmp) / "aide.db.gz"
                self._run(["aide", "--init", "-c", str(self._config(tree, new, new))])
            except _Inconclusive as exc:
                raise RuntimeError(f"VM Shadow baseline: {exc}") from exc
            os.replace(new, self.base_db)
        return self.base_db

    def scan(self, copy: Path) -> ShadowScan:
        """Rebuild the shadow tree from the data disk copy ``copy`` and check it against the baseline (see
        the module docstring). Never raises for what it meets: inconclusive with the reason."""
        t0 = time.perf_counter()
        secs: dict[str, float] = {}
        try:
            base = self.baseline()
        except RuntimeError as exc:
            return ShadowScan((), reason=str(exc))
        secs["baseline_s"] = round(time.perf_counter() - t0, 3)
        with tempfile.TemporaryDirectory(prefix="enmei-vmshadow-scan-") as tmp:
            tree = Path(tmp) / "tree"
            try:
                t = time.perf_counter()
                self._root(tree)
                self._data(copy, tree)
                secs["extract_s"] = round(time.perf_counter() - t, 3)
                t = time.perf_counter()
                conf = self._config(tree, base, Path(tmp) / "unused.db.gz")
                out = self._run(["aide", "--check", "-c", str(conf)], ok=tuple(range(0, 8)))
                secs["aide_s"] = round(time.perf_counter() - t, 3)
            except _Inconclusive as exc:
                return ShadowScan((), secs, reason=f"VM Shadow: {exc}")
            finally:
                with contextlib.suppress(OSError):
                    _writable(tree)  # a dumped tree may hold read-only directories: let cleanup remove them
        report = out.stdout.decode(errors="replace")
        found = tuple(ShadowFinding("aide", what, path) for what, path in parse_aide(report))
        if out.returncode and not found:
            return ShadowScan((), secs, reason=f"VM Shadow: aide exited {out.returncode} but listed no entry")
        secs["total_s"] = round(time.perf_counter() - t0, 3)
        return ShadowScan(found, secs)


class _Inconclusive(Exception):
    pass


def _writable(tree: Path) -> None:
    for dirpath, _dirs, _files in os.walk(tree):
        with contextlib.suppress(OSError):
            os.chmod(dirpath, 0o700)

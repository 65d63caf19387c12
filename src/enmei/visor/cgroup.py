"""cgroup v2 for units: every process a unit starts, however it forks, daemonizes or calls ``setsid``, stays
in the unit's cgroup, so it can be listed, frozen and killed with the unit (issue 11 D8).

Where: beneath the cgroup enmei itself runs in (``/proc/self/cgroup``, the ``0::`` line), on the cgroup2
mount (``/proc/self/mountinfo``): ``<mount><own cgroup>/enmei-<instance>/unit-<name>``. That is a
delegated subtree under systemd (pure v2 at ``/sys/fs/cgroup``) and the hybrid layout's
``/sys/fs/cgroup/unified`` elsewhere. enmei creates only that subtree and removes it again; it never
moves itself here, never enables controllers and never writes into a cgroup it did not create (the
Resource Cage, ``enmei.visor.cage``, may move enmei into ``enmei-<instance>/supervisor`` on a delegated v2
cgroup so that controllers can be passed on; ``discover`` then finds the same tree). Without a
writable cgroup v2 ``CgroupTree.discover`` returns None and the process backend falls back to the
session and a scan by its environment marks.

What the next mechanisms (Resource Cage: limits per unit) build on: ``Cgroup`` — ``create``, ``add``,
``procs``, ``events``, ``populated``, ``kill``, ``freeze``/``thaw``, ``wait_empty``, ``remove`` — and
``CgroupTree`` — ``discover``, ``unit``, ``existing``, ``remove``.

Every method raises ``CgroupError`` (a ``VisorError``) naming the cgroup and what failed; none blocks
longer than its timeout.

>>> parse_own_cgroup("12:pids:/\\n0::/user.slice/enmei.service\\n")
'/user.slice/enmei.service'
>>> parse_cgroup2_mount("41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\\n")
'/sys/fs/cgroup/unified'
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import select
import signal
import time
from pathlib import Path

from enmei.errors import VisorError

__all__ = ["SUPERVISOR_LEAF", "Cgroup", "CgroupError", "CgroupTree", "parse_cgroup2_mount", "parse_own_cgroup",
           "tree_base"]

SUPERVISOR_LEAF = "supervisor"  # enmei-<instance>/supervisor: where enmei itself runs once it passes controllers on
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class CgroupError(VisorError):
    """A cgroup operation failed; ``unit`` names the cgroup's path."""

    def __init__(self, path: Path, action: str, cause: str) -> None:
        super().__init__(str(path), action, cause)

    def __str__(self) -> str:
        return f"cgroup {self.unit}: {self.action} failed: {self.cause}"


def parse_own_cgroup(text: str) -> str | None:
    """The cgroup v2 path of a ``/proc/<pid>/cgroup`` text (its ``0::`` line), or None."""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


def parse_cgroup2_mount(text: str) -> str | None:
    """The mount point of the first cgroup2 file system in a ``/proc/self/mountinfo`` text, or None."""
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if sep and right.split(" ", 1)[0] == "cgroup2":
            fields = left.split()
            if len(fields) >= 5:
                return fields[4].replace("\\040", " ")
    return None


def tree_base(mount: str, own: str, instance: str) -> Path:
    """The directory ``enmei-<instance>`` is made in: the cgroup enmei runs in — or, if that is the
    ``supervisor`` leaf of this instance's own tree (the Resource Cage moved enmei there), the cgroup the
    tree is in.

    >>> str(tree_base("/sys/fs/cgroup", "/system.slice/enmei.service/enmei-ab/supervisor", "ab"))
    '/sys/fs/cgroup/system.slice/enmei.service'
    """
    parts = own.rstrip("/").split("/")
    if parts[-2:] == [f"enmei-{instance}", SUPERVISOR_LEAF]:
        own = "/".join(parts[:-2]) or "/"
    return Path(mount) / own.lstrip("/")


class Cgroup:
    """One cgroup v2 directory (made by enmei)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"Cgroup({str(self.path)!r})"

    @classmethod
    def create(cls, path: Path) -> Cgroup:
        """The cgroup at ``path``, made if missing (its parent must exist)."""
        try:
            path.mkdir(mode=0o755, exist_ok=True)
        except OSError as exc:
            raise CgroupError(path, "create", exc.strerror or str(exc)) from exc
        if not (path / "cgroup.procs").exists():
            raise CgroupError(path, "create", "not a cgroup v2 directory (no cgroup.procs)")
        return cls(path)

    def add(self, pid: int) -> None:
        """Move process ``pid`` (with all its threads) into this cgroup."""
        self._write("cgroup.procs", str(pid), "add")

    def procs(self) -> list[int]:
        """The processes in this cgroup now (not its children's); [] if it is gone."""
        try:
            text = (self.path / "cgroup.procs").read_text()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise CgroupError(self.path, "procs", exc.strerror or str(exc)) from exc
        return [int(x) for x in text.split()]

    def events(self) -> dict[str, int]:
        """``cgroup.events`` as numbers: ``populated`` (1 while a process is in it or beneath), ``frozen``."""
        try:
            text = (self.path / "cgroup.events").read_text()
        except FileNotFoundError:
            return {"populated": 0, "frozen": 0}
        except OSError as exc:
            raise CgroupError(self.path, "events", exc.strerror or str(exc)) from exc
        out: dict[str, int] = {}
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                out[key] = int(value)
        return out

    def populated(self) -> bool:
        return bool(self.events().get("populated", 0))

    def kill(self) -> None:
        """SIGKILL every process in this cgroup and beneath (``cgroup.kill``; before Linux 5.14, each
        listed process, until none is listed or 5 rounds passed)."""
        if (self.path / "cgroup.kill").exists():
            self._write("cgroup.kill", "1", "kill")
            return
        for _ in range(5):
            pids = self.procs()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def freeze(self) -> None:
        """Stop every process in it (``cgroup.freeze``); ``events()['frozen']`` says when it is done."""
        self._write("cgroup.freeze", "1", "freeze")

    def thaw(self) -> None:
        self._write("cgroup.freeze", "0", "thaw")

    def wait_empty(self, timeout_s: float) -> bool:
        """Block until no process is left in it (or beneath); False after ``timeout_s``. Woken by the
        kernel's notification on ``cgroup.events`` (poll), re-read at least every 0.1 s."""
        deadline = time.monotonic() + timeout_s
        try:
            fd = os.open(self.path / "cgroup.events", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return True
        except OSError as exc:
            raise CgroupError(self.path, "wait", exc.strerror or str(exc)) from exc
        try:
            poller = select.poll()
            poller.register(fd, select.POLLPRI | select.POLLERR)
            while True:
                try:
                    os.lseek(fd, 0, os.SEEK_SET)
                    events = os.read(fd, 4096)
                except OSError as exc:
                    if exc.errno == errno.ENODEV:
                        return True  # removed meanwhile (by another stop): only an empty cgroup can be
                    raise CgroupError(self.path, "wait", exc.strerror or str(exc)) from exc
                if b"populated 0" in events:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                poller.poll(min(left, 0.1) * 1000)
        finally:
            os.close(fd)

    def remove(self) -> None:
        """Remove this (empty) cgroup; gone already is fine. ``CgroupError`` if processes are left."""
        try:
            self.path.rmdir()
        except FileNotFoundError:
            return
        except OSError as exc:
            why = "processes are left in it" if exc.errno == errno.EBUSY else (exc.strerror or str(exc))
            raise CgroupError(self.path, "remove", why) from exc

    def _write(self, name: str, value: str, action: str) -> None:
        try:
            with open(self.path / name, "w") as f:
                f.write(value)
        except OSError as exc:
            raise CgroupError(self.path, action, exc.strerror or str(exc)) from exc


class CgroupTree:
    """enmei's subtree ``enmei-<instance>``, one ``unit-<name>`` cgroup per unit beneath it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def discover(cls, instance: str, *, proc: Path = Path("/proc/self")) -> CgroupTree | None:
        """The subtree for this supervisor (made if missing) beneath the cgroup it runs in, or None if
        there is no cgroup v2 or it may not be written (the caller falls back)."""
        if not _SAFE.match(instance):
            raise ValueError(f"not a safe cgroup name: {instance!r}")
        try:
            mount = parse_cgroup2_mount((proc / "mountinfo").read_text())
            own = parse_own_cgroup((proc / "cgroup").read_text())
        except OSError:
            return None
        if mount is None or own is None or ".." in own.split("/"):
            return None
        base = tree_base(mount, own, instance)
        try:
            root = Cgroup.create(base / f"enmei-{instance}")
            probe = Cgroup.create(root.path / ".probe")  # a child may be made: a delegated, writable tree
            probe.remove()
        except CgroupError:
            return None
        return cls(root.path)

    def path_for(self, unit: str) -> Path:
        if not _SAFE.match(unit):
            raise ValueError(f"not a safe cgroup name: {unit!r}")
        return self.root / f"unit-{unit}"

    def unit(self, name: str) -> Cgroup:
        """The unit's cgroup, made if missing."""
        return Cgroup.create(self.path_for(name))

    def slots(self, name: str) -> tuple[Path, Path]:
        """The two cgroups a unit's instance may be in: ``unit-<name>`` and ``unit-<name>@b``, where a
        handover starts the new instance beside the old (``@`` is never in a unit's name)."""
        first = self.path_for(name)
        return first, first.with_name(first.name + "@b")

    def other_slot(self, name: str, current: Path | None) -> Cgroup:
        """The slot ``current`` is not (made if missing)."""
        a, b = self.slots(name)
        return Cgroup.create(a if current == b else b)

    def existing(self, name: str, path: str | None = None) -> Cgroup | None:
        """The unit's cgroup if it exists — at ``path`` (a saved identity's) only if that is one of the two
        this tree would give it (``slots``; a planted path is not trusted)."""
        want = self.path_for(name)
        if path is not None:
            if Path(path) not in self.slots(name):
                return None
            want = Path(path)
        return Cgroup(want) if (want / "cgroup.procs").exists() else None

    def remove(self) -> bool:
        """Remove the units' cgroups that are empty, then the subtree if nothing is left; whether it went."""
        with contextlib.suppress(FileNotFoundError):
            for child in self.root.iterdir():
                if child.is_dir():
                    with contextlib.suppress(CgroupError):
                        Cgroup(child).remove()
        try:
            Cgroup(self.root).remove()
        except CgroupError:
            return False
        return True

"""Shared fixtures. Every process a test starts is reaped, every temp dir removed (pytest's tmp_path)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from enmei.visor.cage import parse_v1_mounts, parse_v1_own
from enmei.visor.cgroup import parse_cgroup2_mount, parse_own_cgroup
from support import hangs
from support.wait import SLOWNESS, scaled

PYTHON = sys.executable


def _enmei_cgroup_parent() -> Path | None:
    """Where the supervisors that tests start make their ``enmei-<instance>`` cgroup trees (beneath ours)."""
    try:
        mount = parse_cgroup2_mount(Path("/proc/self/mountinfo").read_text())
        own = parse_own_cgroup(Path("/proc/self/cgroup").read_text())
    except OSError:
        return None
    if mount is None or own is None:
        return None
    return Path(mount + own)


def _enmei_v1_parents() -> list[Path]:
    """Where the Resource Cage of those supervisors makes its ``enmei-<instance>`` groups in the cgroup v1
    hierarchies (cpu, pids, memory: beneath the cgroup this process is in there)."""
    try:
        own = parse_v1_own(Path("/proc/self/cgroup").read_text())
        mounts = parse_v1_mounts(Path("/proc/self/mountinfo").read_text())
    except OSError:
        return []
    return [Path(mounts[c][0]) / own[c].lstrip("/") for c in ("cpu", "pids", "memory") if c in mounts and c in own]


def _enmei_trees(parent: Path) -> set[str]:
    try:
        return {p.name for p in parent.iterdir() if p.is_dir() and p.name.startswith("enmei-")}
    except OSError:
        return set()


def _remove_if_empty(tree: Path) -> bool:
    """rmdir a cgroup tree bottom-up; the kernel refuses (and we stop) where any process is still in it."""
    for dirpath, dirnames, _ in os.walk(tree, topdown=False):
        for d in dirnames:
            try:
                os.rmdir(Path(dirpath) / d)
            except OSError:
                return False
    try:
        os.rmdir(tree)
    except OSError:
        return False
    return True


def pytest_sessionstart(session: pytest.Session) -> None:
    parent = _enmei_cgroup_parent()
    session.config.stash[_TREES_BEFORE] = _enmei_trees(parent) if parent is not None else set()
    session.config.stash[_V1_BEFORE] = {str(p / n) for p in _enmei_v1_parents() for n in _enmei_trees(p)}


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A supervisor that a test ``kill -9``s leaves its (empty) cgroup tree behind, by design: crash-only, the
    next supervisor on that state dir takes it over. Tests start no next one, so remove every empty tree
    made during the run. Only in the process that ran the session (the xdist controller, once all workers
    are done), so a tree in use by a running test is never touched; a tree with a process left in it is
    kept and reported, as a leak of that test."""
    if hasattr(session.config, "workerinput"):
        return
    v1_before = session.config.stash.get(_V1_BEFORE, set())
    v1_kept = [str(p / n) for p in _enmei_v1_parents() for n in sorted(_enmei_trees(p))
               if str(p / n) not in v1_before and not _remove_if_empty(p / n)]
    if v1_kept:
        sys.stderr.write(f"\nenmei tests: cgroup v1 groups still holding processes: {v1_kept}\n")
    # Guest RAM of QEMUs a test killed together with their supervisor (nothing left to remove it): the same
    # sweep a QEMU backend makes at its first start; folders whose files a process holds are left.
    from enmei.visor.qemu.ram import sweep_unheld

    swept = sweep_unheld()
    if swept:
        sys.stderr.write(f"\nenmei tests: removed guest RAM no process held: {[d.name for d in swept]}\n")
    parent = _enmei_cgroup_parent()
    if parent is None:
        return
    before = session.config.stash.get(_TREES_BEFORE, set())
    kept = [name for name in sorted(_enmei_trees(parent) - before) if not _remove_if_empty(parent / name)]
    if kept:
        sys.stderr.write(f"\nenmei tests: cgroup trees still holding processes: {kept} (under {parent})\n")


_TREES_BEFORE = pytest.StashKey[set[str]]()
_V1_BEFORE = pytest.StashKey[set[str]]()


def pytest_report_header(config: pytest.Config) -> str:
    return f"enmei: machine slowness {SLOWNESS:.2f} (timeouts are stretched by it; ENMEI_TEST_SLOWNESS overrides)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Stretch every test's pytest-timeout (the ini default or its own mark) by the machine's slowness, so
    that a loaded machine gets more time instead of a killed test; an idle one keeps the bound as written."""
    default = float(config.getini("timeout") or 0)
    for item in items:
        mark = item.get_closest_marker("timeout")
        seconds = default
        if mark is not None:
            seconds = float(mark.args[0] if mark.args else mark.kwargs.get("timeout", default))
        if seconds > 0:
            # (plus the margin in which ``support.hangs`` says where a test that used all of it is stuck)
            item.add_marker(pytest.mark.timeout(scaled(seconds) + hangs.MARGIN_S), append=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> object:
    """A test about to hit its timeout first says which awaits it is stuck in (``support.hangs``)."""
    mark = item.get_closest_marker("timeout")
    seconds = float(mark.args[0]) if mark is not None and mark.args else float(item.config.getini("timeout") or 0)
    disarm = hangs.arm(getattr(item, "originalname", item.name), seconds)
    try:
        return (yield)
    finally:
        disarm()


@pytest.fixture
def write_config(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write an enmei.toml into tmp_path and return its path."""

    def write(text: str, name: str = "enmei.toml") -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p

    return write

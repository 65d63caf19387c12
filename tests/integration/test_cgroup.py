"""``enmei.visor.cgroup`` on the real cgroup v2 of this machine: the API the Resource Cage builds on."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator

import psutil
import pytest

from enmei.visor.cgroup import CgroupError, CgroupTree

from .conftest import PY, Procs, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def tree(request: pytest.FixtureRequest) -> Iterator[CgroupTree]:
    instance = hashlib.sha256(f"{request.node.nodeid}{os.getpid()}".encode()).hexdigest()[:16]
    t = CgroupTree.discover(instance)
    assert t is not None, "this machine has a writable cgroup v2 (PLATFORM.md)"
    try:
        yield t
    finally:
        for child in t.root.iterdir() if t.root.exists() else []:
            if child.is_dir():
                with contextlib.suppress(OSError):
                    (child / "cgroup.kill").write_text("1")
        wait_until(lambda: not any(c.is_dir() and (c / "cgroup.procs").read_text().strip()
                                   for c in t.root.iterdir()), 10)
        assert t.remove()


def test_add_procs_freeze_kill_wait_and_remove(tree: CgroupTree, procs: Procs) -> None:
    cg = tree.unit("web")
    assert cg.events() == {"populated": 0, "frozen": 0}
    p = procs.popen([PY, "-c", "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
                               "'import time; time.sleep(600)'], start_new_session=True); time.sleep(600)"])
    cg.add(p.pid)
    assert wait_until(lambda: len(cg.procs()) == 2, 20)  # its child, started after the move, is in it too
    assert cg.populated()
    with pytest.raises(CgroupError, match="processes are left"):
        cg.remove()
    cg.freeze()
    assert wait_until(lambda: cg.events()["frozen"] == 1, 10)
    assert all(psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_SLEEPING) for pid in cg.procs())
    cg.thaw()
    assert wait_until(lambda: cg.events()["frozen"] == 0, 10)
    cg.kill()
    assert cg.wait_empty(10)
    assert p.wait(10) == -9
    assert cg.procs() == [] and not cg.populated()
    cg.remove()
    assert not cg.path.exists()
    cg.remove()  # gone already: fine
    assert cg.wait_empty(0)  # an absent cgroup is empty


def test_adding_a_missing_process_is_a_clear_error(tree: CgroupTree) -> None:
    cg = tree.unit("x")
    with pytest.raises(CgroupError, match=r"cgroup .*unit-x: add failed"):
        cg.add(2**22 + 12345)  # above pid_max's default: no such process
    cg.remove()

"""Finding where enmei's cgroup subtree goes, from a fake /proc (no cgroup is made here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from enmei.visor.cgroup import CgroupTree, parse_cgroup2_mount, parse_own_cgroup

HYBRID = """31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


def test_the_v2_mount_and_own_cgroup_are_read_from_proc() -> None:
    assert parse_cgroup2_mount(HYBRID) == "/sys/fs/cgroup/unified"
    assert parse_cgroup2_mount("24 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n") == "/sys/fs/cgroup"
    assert parse_cgroup2_mount(HYBRID.replace("cgroup2 cgroup2", "cgroup cgroup")) is None
    assert parse_own_cgroup("4:memory:/x\n0::/user.slice/user-1000.slice/session-3.scope\n") == \
        "/user.slice/user-1000.slice/session-3.scope"
    assert parse_own_cgroup("4:memory:/x\n") is None  # v1 only


def _proc(tmp_path: Path, mountinfo: str, cgroup: str) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "mountinfo").write_text(mountinfo)
    (proc / "cgroup").write_text(cgroup)
    return proc


def test_no_usable_cgroup_v2_means_none_so_the_backend_falls_back(tmp_path: Path) -> None:
    # no cgroup2 mount at all
    assert CgroupTree.discover("abc", proc=_proc(tmp_path, HYBRID.replace("cgroup2 cgroup2", "x x"), "0::/\n")) is None
    # a "mount" that is not a cgroup file system (a plain directory: no cgroup.procs in what mkdir made)
    fake_mount = tmp_path / "fs"
    fake_mount.mkdir()
    (tmp_path / "p2").mkdir()
    proc = tmp_path / "p2"
    (proc / "mountinfo").write_text(f"41 31 0:38 / {fake_mount} rw - cgroup2 cgroup2 rw\n")
    (proc / "cgroup").write_text("0::/\n")
    assert CgroupTree.discover("abc", proc=proc) is None
    # a cgroup path that climbs out is refused before anything is made
    (proc / "cgroup").write_text("0::/../../etc\n")
    assert CgroupTree.discover("abc", proc=proc) is None


def test_unit_and_instance_names_are_checked_and_a_planted_path_is_not_trusted(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="safe cgroup name"):
        CgroupTree.discover("../x", proc=tmp_path)
    tree = CgroupTree(tmp_path / "enmei-abc")
    assert tree.path_for("web") == tmp_path / "enmei-abc" / "unit-web"
    with pytest.raises(ValueError, match="safe cgroup name"):
        tree.path_for("a/b")
    (tree.path_for("web")).mkdir(parents=True)
    (tree.path_for("web") / "cgroup.procs").write_text("")
    assert tree.existing("web") is not None
    assert tree.existing("web", str(tmp_path / "elsewhere")) is None

"""``enmei.visor.cage`` against a cgroup file system laid out in a temp dir (the kernel's files as plain
files): where limits go, the v2 delegation step, and what is refused. The real cgroups are exercised in
tests/integration/test_cage.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from enmei.config.load import load_text
from enmei.errors import ConfigError
from enmei.visor.cage import (
    Limits,
    ResourceCage,
    balance_v1_cpu,
    host_support,
    limit_notices,
    parse_v1_mounts,
    parse_v1_own,
)
from enmei.visor.cgroup import CgroupTree, tree_base


def _cgroup(path: Path, controllers: str = "", procs: str = "") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in (("cgroup.procs", procs), ("cgroup.controllers", controllers), ("cgroup.subtree_control", ""),
                       ("cgroup.events", "populated 0\nfrozen 0\n")):
        (path / name).write_text(text)
    return path


def _proc(tmp_path: Path, own: str, mount: Path) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(f"0::{own}\n")
    (proc / "mountinfo").write_text(f"41 31 0:38 / {mount} rw,relatime - cgroup2 cgroup2 rw\n")
    return proc


def test_cpu_max_takes_cpus_or_a_percentage_and_a_bad_value_names_its_key_and_line(tmp_path: Path) -> None:
    base = '[units.a]\ncommand = ["/bin/true"]\n'
    for text, want in (('"50%"', 0.5), ('"0.25"', 0.25), ("2", 2.0)):
        unit = load_text(base + f"cpu_max = {text}\n", tmp_path / "enmei.toml").config.units["a"]
        assert Limits.of(unit).cpu_max == want
    unit = load_text(base + 'memory_max = "256MiB"\npids_max = 20\n', tmp_path / "enmei.toml").config.units["a"]
    assert Limits.of(unit).asked() == {"memory_max": 256 * 2**20, "pids_max": 20}
    with pytest.raises(ConfigError) as err:
        load_text(base + 'cpu_max = "lots"\n', tmp_path / "enmei.toml")
    assert "units.a.cpu_max" in str(err.value) and ":3" in str(err.value) and "percentage" in str(err.value)
    with pytest.raises(ConfigError, match=r"units\.a\.pids_max"):
        load_text(base + "pids_max = 0\n", tmp_path / "enmei.toml")


def test_v1_lines_and_mounts_are_read_with_comounted_controllers() -> None:
    assert parse_v1_own("3:cpu,cpuacct:/x\n9:name=systemd:/\n0::/y\n") == {"cpu": "/x", "cpuacct": "/x"}
    mounts = parse_v1_mounts("32 31 0:29 /sub /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
                             "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n")
    assert mounts == {"cpu": ("/sys/fs/cgroup/cpu,cpuacct", "/sub"), "cpuacct": ("/sys/fs/cgroup/cpu,cpuacct", "/sub")}


def test_on_a_delegated_v2_cgroup_enmei_moves_into_its_leaf_and_passes_the_controllers_on(tmp_path: Path) -> None:
    mount = tmp_path / "cg"
    own = _cgroup(mount / "svc", "cpu memory pids", f"{os.getpid()}\n")
    root = _cgroup(own / "enmei-i1")
    leaf = _cgroup(root / "supervisor")
    cage = ResourceCage("i1", CgroupTree(root), proc=_proc(tmp_path, "/svc", mount))
    cage.discover()
    assert leaf.joinpath("cgroup.procs").read_text() == str(os.getpid())  # enmei left the delegated cgroup
    assert own.joinpath("cgroup.subtree_control").read_text().startswith("+")  # and passes controllers on
    assert not any("processes enmei did not start" in why for why in cage.missing.values())


def test_enmei_does_not_move_when_a_process_it_did_not_start_shares_its_cgroup(tmp_path: Path) -> None:
    mount = tmp_path / "cg"
    own = _cgroup(mount / "session", "cpu memory pids", f"{os.getpid()}\n1\n")
    root = _cgroup(own / "enmei-i2")
    leaf = _cgroup(root / "supervisor")
    cage = ResourceCage("i2", CgroupTree(root), proc=_proc(tmp_path, "/session", mount))
    cage.discover()
    assert leaf.joinpath("cgroup.procs").read_text() == ""
    assert own.joinpath("cgroup.subtree_control").read_text() == ""  # nothing changed
    assert "pids [1]" in cage.missing["cpu"]
    notice = cage.notice_for("memory_max")
    assert notice is not None and "processes enmei did not start" in notice


def test_a_tree_is_found_again_from_the_leaf_enmei_moved_into() -> None:
    assert tree_base("/cg", "/svc/enmei-i3/supervisor", "i3") == Path("/cg/svc")
    assert tree_base("/cg", "/svc/enmei-other/supervisor", "i3") == Path("/cg/svc/enmei-other/supervisor")
    assert tree_base("/cg", "/", "i3") == Path("/cg")


def test_check_reads_what_the_host_offers_without_creating_anything(tmp_path: Path) -> None:
    mount = tmp_path / "cg"
    own = _cgroup(mount / "svc", "memory pids")
    before = sorted(p.name for p in own.iterdir())
    support = host_support(_proc(tmp_path, "/svc", mount))
    assert support["memory"] is None and support["pids"] is None
    assert support["cpu"] is not None and "no cpu controller" in support["cpu"]
    assert sorted(p.name for p in own.iterdir()) == before
    spec = load_text('[units.a]\ncommand = ["/bin/true"]\ncpu_max = 0.5\npids_max = 3\n',
                     tmp_path / "enmei.toml").config.units["a"]
    found = limit_notices({"a": spec}, tmp_path / "proc")
    assert [(u, k) for u, k, _ in found] == [("a", "cpu_max")]


def test_the_v1_instance_group_weighs_what_its_children_weigh(tmp_path: Path) -> None:
    """enmei-<instance> in the v1 cpu hierarchy competes with the tasks beside it: its weight is the sum
    of the helper cage's 2048 and 1024 per unit group, and 1024 again once it is empty."""
    base = tmp_path / "enmei-x"
    for name, shares in (("cage", "2048"), ("unit-a", "1024"), ("unit-b", "1024")):
        (base / name).mkdir(parents=True)
        (base / name / "cpu.shares").write_text(shares)
    balance_v1_cpu(base)
    assert (base / "cpu.shares").read_text() == "4096"
    for name in ("cage", "unit-a", "unit-b"):
        (base / name / "cpu.shares").unlink()
        (base / name).rmdir()
    balance_v1_cpu(base)
    assert (base / "cpu.shares").read_text() == "1024"

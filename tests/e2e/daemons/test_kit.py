"""The daemon kit (``enmei.daemons``): every daemon it prepares is a valid enmei unit, its dir is its own,
a missing binary names its Debian package, a broken config is refused by the daemon's own check."""

from __future__ import annotations

import os
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest

from enmei import daemons
from enmei.config.load import check, load_text
from enmei.config.model import ProcessUnit
from enmei.daemons.base import make_root, toml_table, which

pytestmark = [pytest.mark.e2e, pytest.mark.daemons]


@pytest.mark.parametrize("kind", ["nginx", "redis", "postgresql"])
def test_each_daemon_is_a_valid_unit_in_a_dir_of_its_own(kind: str, tmp_path: Path) -> None:
    d = daemons.prepare(kind)
    try:
        assert d.root.name.startswith(f"enmei-{kind}-") and stat.S_IMODE(d.root.stat().st_mode) == 0o755
        cfg = tmp_path / "enmei.toml"
        cfg.write_text(d.unit_toml())
        assert check(cfg) == []
        unit = load_text(cfg.read_text(), cfg).config.units[kind]
        assert isinstance(unit, ProcessUnit)
        assert unit.command == d.argv and unit.stop_signal == d.stop_signal
        assert unit.listen == [f"127.0.0.1:{d.port}"]
        assert unit.startup_probe == (d.readiness or d.probe)["name"]
        # Every path the daemon is told about lies in its dir.
        paths = [a for a in d.argv if a.startswith("/") and a != d.argv[0]]
        assert paths and all(Path(p).resolve().is_relative_to(d.root) for p in paths), paths
        assert d.config_file is not None and d.config_file.is_relative_to(d.root)
    finally:
        d.cleanup()
    assert not d.root.exists()


def test_overrides_replace_and_remove_keys() -> None:
    d = daemons.prepare("redis")
    try:
        text = d.unit_toml("cache", stop_timeout_s=3, startup_probe=None, user=None)
        assert text.startswith("[units.cache]\n") and "stop_timeout_s = 3\n" in text
        assert "startup_probe" not in text and "user =" not in text
        assert '[[units.cache.probes]]\nname = "ping"' in text
    finally:
        d.cleanup()


def test_nginx_broken_config_fails_its_pre_start_check_and_fixed_passes() -> None:
    d = daemons.prepare("nginx")
    try:
        (pre,) = d.pre_start
        assert subprocess.run(pre, capture_output=True, check=False, timeout=60).returncode == 0
        d.break_config()
        r = subprocess.run(pre, capture_output=True, text=True, check=False, timeout=60)
        assert r.returncode != 0 and "no_such_directive_enmei" in r.stderr
        d.fix_config()
        assert subprocess.run(pre, capture_output=True, check=False, timeout=60).returncode == 0
    finally:
        d.cleanup()


def test_a_missing_binary_names_its_debian_package() -> None:
    with pytest.raises(daemons.MissingDaemonError) as err:
        which("nginx", "no-such-binary-enmei", "nginx-light")
    assert err.value.package == "nginx-light"
    assert "apt-get install -y nginx-light" in str(err.value)


def test_an_unknown_kind_and_a_closed_parent_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(daemons.DaemonError, match="no such daemon in the kit"):
        daemons.prepare("no-such-daemon")
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    with pytest.raises(daemons.DaemonError, match="closed to other users"):
        make_root("redis", closed)
    assert os.listdir(closed) == []


def test_toml_table_renders_what_a_unit_uses() -> None:
    text = toml_table("u", {"command": ["a", 'b"c'], "autostart": False, "start_s": 0.5,
                            "restart": {"budget": 9}, "probes": [{"kind": "tcp", "port": 1}]})
    assert tomllib.loads(text) == {"units": {"u": {"command": ["a", 'b"c'], "autostart": False, "start_s": 0.5,
                                                   "restart": {"budget": 9},
                                                   "probes": [{"kind": "tcp", "port": 1}]}}}

"""Issue 12 item 8 (reload), run as an operator would: a real `enmei up`, its config file edited, then
SIGHUP. Unchanged units keep their process; a changed one is restarted (or updated in place), a removed
one stopped, an added one started; a broken edit keeps the old config and journals file:line:key.
On the old code SIGHUP was only journaled, so each of these fails there."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from .conftest import PY, Procs, wait_until

pytestmark = pytest.mark.integration


def _unit(name: str, *, arg: str = "300", extra: str = "") -> str:
    return f'[units.{name}]\ncommand = ["sleep", "{arg}"]\nstart_s = 0.2\nstop_timeout_s = 2\n{extra}\n'


def _records(journal: Path) -> list[tuple[int, str, str | None, dict[str, object]]]:
    try:
        conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    except sqlite3.Error:
        return []
    try:
        return [(int(s), str(k), u, json.loads(b)) for s, k, u, b in
                conn.execute("SELECT seq, kind, unit, body FROM records ORDER BY seq")]
    except sqlite3.Error:  # not made yet
        return []
    finally:
        conn.close()


def _reloads(journal: Path) -> list[dict[str, object]]:
    return [b for _, k, _, b in _records(journal) if k == "reload"]


def _pids(state: Path) -> dict[str, int]:
    try:
        units = json.loads((state / "units.json").read_text())["units"]
    except (OSError, ValueError, KeyError):
        return {}
    return {name: int(u["pid"]) for name, u in units.items()}


class Up:
    """A real `enmei up` on ``cfg``; its units' pids from units.json."""

    def __init__(self, procs: Procs, tmp: Path, text: str) -> None:
        self.procs, self.cfg, self.state, self.log = procs, tmp / "enmei.toml", tmp / ".enmei", tmp / "up.log"
        self.cfg.write_text(text)
        with open(self.log, "wb") as out:
            self.p = procs.popen([PY, "-m", "enmei", "up", "--plain", str(self.cfg)], stdout=out,
                                 stderr=subprocess.STDOUT)

    @property
    def journal(self) -> Path:
        return self.state / "journal.sqlite"

    def running(self, *names: str) -> dict[str, int]:
        def ok() -> bool:
            pids = _pids(self.state)
            return self.p.poll() is not None or all(n in pids and psutil.pid_exists(pids[n]) for n in names)

        assert wait_until(ok, timeout=60), self.log.read_text()
        assert self.p.poll() is None, self.log.read_text()
        pids = _pids(self.state)
        for n in names:
            self.procs.adopt_pid(pids[n])
        return {n: pids[n] for n in names}

    def reload(self, text: str, done: str = "applied") -> dict[str, object]:
        """Write ``text`` as the config, SIGHUP, and wait for the reload record ``done`` that follows."""
        before = len(_reloads(self.journal))
        self.cfg.write_text(text)
        self.p.send_signal(signal.SIGHUP)
        assert wait_until(lambda: any(r.get("event") == done for r in _reloads(self.journal)[before:]),
                          timeout=60), (self.log.read_text(), _reloads(self.journal))
        return _reloads(self.journal)[before]

    def stop(self) -> int:
        self.p.send_signal(signal.SIGTERM)
        return self.p.wait(timeout=60)


@pytest.fixture
def up(procs: Procs, tmp_path: Path) -> Iterator[list[Up]]:
    made: list[Up] = []
    yield made
    for u in made:
        if u.p.poll() is None:
            u.stop()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sighup_restarts_only_the_changed_unit_and_updates_in_place(tmp_path: Path, procs: Procs,
                                                                    up: list[Up]) -> None:
    u = Up(procs, tmp_path, _unit("a") + _unit("b") + _unit("c"))
    up.append(u)
    first = u.running("a", "b", "c")
    diff = u.reload(_unit("a") + _unit("b", arg="301") + _unit("c", extra="[units.c.restart]\nbudget = 9\n"))
    assert diff["changed"] == {"b": {"keys": ["command"], "how": "restart"},
                               "c": {"keys": ["restart.budget"], "how": "in_place"}}, diff
    assert diff["unchanged"] == ["a"] and diff["added"] == [] and diff["removed"] == []
    after = u.running("a", "b", "c")
    assert after["a"] == first["a"] and _alive(first["a"])  # unchanged: the same process
    assert after["c"] == first["c"] and _alive(first["c"])  # in place: the same process
    assert after["b"] != first["b"] and not _alive(first["b"])  # restarted with its new command
    assert psutil.Process(after["b"]).cmdline() == ["sleep", "301"]
    assert u.stop() == 0


def test_a_broken_edit_keeps_the_old_config_and_journals_where(tmp_path: Path, procs: Procs, up: list[Up]) -> None:
    u = Up(procs, tmp_path, _unit("a") + _unit("b"))
    up.append(u)
    first = u.running("a", "b")
    # Line 10 names a user this machine does not have: a machine check, not the schema.
    broken = _unit("a") + _unit("b", arg="301", extra='user = "enmei-no-such-user"\n')
    refused = u.reload(broken, done="rejected")
    assert refused["ok"] is False
    problems = refused["problems"]
    assert isinstance(problems, list) and problems, refused
    p = problems[0]
    assert p["file"] == str(u.cfg) and p["key"] == "units.b.user" and p["line"] == 10, p
    # A syntax error too: refused with its line, and still nothing changed.
    refused = u.reload(_unit("a") + "[units.b\n", done="rejected")
    assert refused["problems"][0]["line"] == 6, refused  # type: ignore[index]
    assert u.running("a", "b") == first and all(_alive(pid) for pid in first.values())
    # The old config is the one in force: a good edit is diffed against it, not against the broken ones.
    diff = u.reload(_unit("a") + _unit("b") + _unit("d"))
    assert diff["added"] == ["d"] and diff["changed"] == {} and diff["unchanged"] == ["a", "b"], diff
    u.running("d")
    assert u.stop() == 0


def test_a_removed_unit_is_stopped_and_an_added_one_started(tmp_path: Path, procs: Procs, up: list[Up]) -> None:
    u = Up(procs, tmp_path, _unit("a") + _unit("b"))
    up.append(u)
    first = u.running("a", "b")
    diff = u.reload(_unit("a") + _unit("n"))
    assert diff["removed"] == ["b"] and diff["added"] == ["n"], diff
    assert wait_until(lambda: not _alive(first["b"]), timeout=30)
    after = u.running("a", "n")
    assert after["a"] == first["a"] and "b" not in _pids(u.state)
    stopped = [b for _, k, unit, b in _records(u.journal) if k == "unit.state" and unit == "b"]
    assert stopped and stopped[-1]["to"] == "stopped", stopped
    assert u.stop() == 0

"""Issue 12 item 6 (the process parts): a unit's ``user``, ``group``, ``groups`` and ``umask`` applied in
the child before exec, checked against the machine by ``enmei check``; ``pre_start`` commands whose failure
is a config error of the unit (journaled, alerted, the state says why), retried slowly, never a crash loop."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import pwd
from pathlib import Path

import pytest

from enmei.clock import SystemClock, wait_for
from enmei.config.load import check, load_text
from enmei.config.model import ProcessUnit
from enmei.engine import Engine, journal_for
from enmei.errors import StartError
from enmei.model import UnitEvent, UnitEventKind, UnitState
from enmei.visor.process import ProcessBackend

from .conftest import PY, wait_until
from .test_supervise import Running

pytestmark = pytest.mark.integration

# Prints who it runs as, then waits; its umask is read without changing it for long.
WHO = ("import json, os, time\n"
       "m = os.umask(0); os.umask(m)\n"
       "print(json.dumps({'uid': os.getuid(), 'euid': os.geteuid(), 'gid': os.getgid(), 'egid': os.getegid(),"
       " 'groups': sorted(os.getgroups()), 'umask': m}), flush=True)\n"
       "time.sleep(600)\n")

async def test_a_unit_runs_as_nobody_with_its_groups_and_umask(tmp_path: Path) -> None:
    assert os.geteuid() == 0, "changing a unit's user needs root: the suite runs as root here"
    nobody = pwd.getpwnam("nobody")
    cfg = f'[units.who]\ncommand = ["{PY}", "-c", {json.dumps(WHO)}]\nuser = "nobody"\numask = "027"\n'
    spec = load_text(cfg, tmp_path / "enmei.toml").config.units["who"]
    events: list[UnitEvent] = []
    b = ProcessBackend(clock=SystemClock(), state_dir=tmp_path / "state", emit=events.append, base_dir=tmp_path)
    out = tmp_path / "state" / "logs" / "who.stdout.log"
    try:
        ident = await b.start("who", spec)
        assert await asyncio.to_thread(wait_until, lambda: out.exists() and out.read_text().strip() != "", 20)
        seen = json.loads(out.read_text().splitlines()[0])
        assert seen["uid"] == seen["euid"] == nobody.pw_uid
        assert seen["gid"] == seen["egid"] == nobody.pw_gid
        assert seen["groups"] == sorted(os.getgrouplist("nobody", nobody.pw_gid))  # not root's groups
        assert seen["umask"] == 0o027
        if b.cgroups is not None:  # dropped after joining its cgroup, which only root could do
            assert ident.pid in [int(p) for p in (b.cgroups.path_for("who") / "cgroup.procs").read_text().split()]
    finally:
        with contextlib.suppress(Exception):
            await b.stop("who", timeout_s=2)
        await b.close()


async def test_explicit_group_and_supplementary_groups(tmp_path: Path) -> None:
    cfg = (f'[units.who]\ncommand = ["{PY}", "-c", {json.dumps(WHO)}]\n'
           'user = "nobody"\ngroup = "nogroup"\ngroups = ["daemon", 4]\numask = 0o077\n')
    spec = load_text(cfg, tmp_path / "enmei.toml").config.units["who"]
    b = ProcessBackend(clock=SystemClock(), state_dir=tmp_path / "state", emit=lambda e: None, base_dir=tmp_path)
    out = tmp_path / "state" / "logs" / "who.stdout.log"
    try:
        await b.start("who", spec)
        assert await asyncio.to_thread(wait_until, lambda: out.exists() and out.read_text().strip() != "", 20)
        seen = json.loads(out.read_text().splitlines()[0])
        assert seen["gid"] == grp.getgrnam("nogroup").gr_gid
        assert seen["groups"] == sorted({grp.getgrnam("daemon").gr_gid, 4})
        assert seen["umask"] == 0o077
    finally:
        with contextlib.suppress(Exception):
            await b.stop("who", timeout_s=2)
        await b.close()


@pytest.mark.parametrize(("line", "key", "says"), [
    ('user = "no-such-user-enmei"', "user", "no such user 'no-such-user-enmei'"),
    ('group = "no-such-group-enmei"', "group", "no such group"),
    ('groups = ["daemon", "no-such-group-enmei"]', "groups", "no such group"),
    ('user = "61234"', "user", "no passwd entry"),
    ('pre_start = ["no-such-command-enmei", "-t"]', "pre_start", "is not on PATH"),
])
def test_a_missing_user_group_or_pre_start_is_a_config_error_at_its_line(
        tmp_path: Path, line: str, key: str, says: str) -> None:
    path = tmp_path / "enmei.toml"
    path.write_text(f'[units.x]\ncommand = ["{PY}", "-c", "pass"]\n{line}\n')
    problems = check(path)
    assert [(p.key, p.line) for p in problems] == [(f"units.x.{key}", 3)], problems
    assert says in problems[0].message


async def test_a_user_missing_at_start_fails_the_start_as_a_config_error(tmp_path: Path) -> None:
    """Deleted between check and start: the start refuses (never runs the command as enmei's user)."""
    spec = ProcessUnit(command=[PY, "-c", "pass"], user="no-such-user-enmei")
    b = ProcessBackend(clock=SystemClock(), state_dir=tmp_path / "state", emit=lambda e: None, base_dir=tmp_path)
    try:
        with pytest.raises(StartError) as err:
            await b.start("x", spec)
        assert err.value.config_error and err.value.cause.startswith("config error: user: no such user")
        assert not b.alive("x")
    finally:
        await b.close()


async def test_a_failing_pre_start_is_a_config_error_not_a_crash_loop(tmp_path: Path) -> None:
    runs = tmp_path / "pre_start.runs"
    started = tmp_path / "started"
    pre = (f"open({str(runs)!r}, 'a').write('x'); import sys; "
           "print('nginx: bad directive at line 3', file=sys.stderr); sys.exit(1)")
    cfg = (f'[units.web]\ncommand = ["{PY}", "-c", "open({str(started)!r}, \'w\'); import time; time.sleep(600)"]\n'
           f"pre_start = [[{json.dumps(PY)}, \"-c\", {json.dumps(pre)}]]\n"
           "[units.web.escalate]\nretry_every_s = 600\n")
    loaded = load_text(cfg, tmp_path / "enmei.toml")
    journal = journal_for(loaded).open()
    engine = Engine(loaded, journal=journal)
    r = Running(engine, asyncio.create_task(engine.run()))
    try:
        assert await r.until(lambda: "web" in engine.units and r.unit().state is UnitState.ESCALATED, 30)
        failed = r.first("unit.event", event="start_failed")
        assert failed is not None
        cause = failed[1]["cause"]
        assert cause.startswith("config error: pre_start") and "bad directive at line 3" in cause
        assert await r.until(lambda: any(k == "alert" and "config error" in json.dumps(b)
                                         for _, _, k, _, b in r.records), 30)
        last = [b for _, _, k, _, b in r.records if k == "unit.state"][-1]
        assert last["to"] == "escalated" and "config error: pre_start" in last["reason"]
        # Watch for a while: the pre_start is not run again (the next try is retry_every_s away).
        await asyncio.sleep(3)
        assert runs.read_text() == "x", "the failing pre_start was retried"
        assert not started.exists(), "the unit's command ran although its pre_start failed"
        assert r.unit().state is UnitState.ESCALATED
    finally:
        engine.stop()
        await wait_for(r.task, 60)
        journal.close()


async def test_a_passing_pre_start_runs_before_each_start(tmp_path: Path) -> None:
    runs = tmp_path / "pre_start.runs"
    spec = load_text(f'[units.x]\ncommand = ["{PY}", "-c", "import time; time.sleep(600)"]\n'
                     f'pre_start = ["/bin/sh", "-c", "echo -n x >> {runs}"]\n',
                     tmp_path / "enmei.toml").config.units["x"]
    events: list[UnitEvent] = []
    b = ProcessBackend(clock=SystemClock(), state_dir=tmp_path / "state", emit=events.append, base_dir=tmp_path)
    try:
        await b.start("x", spec)
        await b.stop("x", timeout_s=2)
        await b.start("x", spec)
        assert runs.read_text() == "xx"
        assert [e.kind for e in events] == [UnitEventKind.STARTED, UnitEventKind.STOPPED, UnitEventKind.STARTED]
    finally:
        with contextlib.suppress(Exception):
            await b.stop("x", timeout_s=2)
        await b.close()

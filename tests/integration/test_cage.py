"""Issue 12 item 4, the Resource Cage, on this machine's real cgroups (the hybrid layout: v1 ``cpu``,
``pids`` and ``memory``): a busy loop held to ``cpu_max``, a fork bomb stopped by ``pids_max`` while enmei
supervises another unit, a leak OOM-killed at ``memory_max`` and restarted with the reason "oom" — and
every group enmei made removed afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from enmei.box import Reader, verify
from enmei.clock import SystemClock, wait_for
from enmei.config.load import load_text
from enmei.demo.ports import free_ports
from enmei.engine import Engine, journal_for
from enmei.model import UnitEvent, UnitEventKind, UnitState
from enmei.visor.cage import ResourceCage, caged_argv, install_cage, parse_v1_mounts, parse_v1_own
from enmei.visor.process import ProcessBackend
from support.wait import auntil, scaled

from .conftest import PY, Procs, wait_until

pytestmark = pytest.mark.integration

BUSY = "open(__import__('sys').argv[1], 'w').close()\nwhile True:\n    pass\n"

# Forks children that sleep, until a fork fails (at most 200: bounded on a host without the limit);
# writes {"forked": n, "errno": e} to argv[1], then stays.
BOMB = r'''
import json, os, sys, time
n, err = 0, None
while n < 200:
    try:
        pid = os.fork()
    except OSError as exc:
        err = exc.errno
        break
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    n += 1
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump({"forked": n, "errno": err}, f)
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(600)
'''

# Grows by 4 MiB (touched) every 10 ms, up to 1 GiB (bounded on a host without the limit); appends one
# line to argv[1] per start.
LEAK = r'''
import sys, time
with open(sys.argv[1], "a") as f:
    f.write("start\n")
hoard = []
for _ in range(256):
    hoard.append(bytearray(4 << 20))
    time.sleep(0.01)
time.sleep(600)
'''


def _v1_dirs(instance: str) -> list[Path]:
    """enmei-<instance> in each v1 hierarchy with cpu, pids or memory, that exists now."""
    own = parse_v1_own(Path("/proc/self/cgroup").read_text())
    mounts = parse_v1_mounts(Path("/proc/self/mountinfo").read_text())
    out = []
    for ctrl in ("cpu", "pids", "memory"):
        if ctrl in mounts and ctrl in own:
            p = Path(mounts[ctrl][0]) / own[ctrl].lstrip("/") / f"enmei-{instance}"
            if p.exists():
                out.append(p)
    return out


def _cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


async def test_cpu_max_holds_a_busy_loop_to_its_share_and_its_groups_are_removed(tmp_path: Path) -> None:
    """Before the cage the key did not exist (a config error) and the loop took a whole CPU when it could."""
    ready = tmp_path / "ready"
    cfg = f'[units.busy]\ncommand = ["{PY}", "-c", {json.dumps(BUSY)}, "{ready}"]\ncpu_max = "20%"\n'
    spec = load_text(cfg, tmp_path / "enmei.toml").config.units["busy"]
    events: list[UnitEvent] = []
    b = ProcessBackend(clock=SystemClock(), state_dir=tmp_path / "state", emit=events.append)
    try:
        ident = await b.start("busy", spec)
        assert await asyncio.to_thread(wait_until, ready.exists, scaled(20))
        assert events[0].kind is UnitEventKind.STARTED and events[0].detail["limits"] == {"cpu_max": 0.2}
        assert b.cage is not None
        group = b.cage.v1["cpu"] / "unit-busy"
        assert ident.pid in [int(x) for x in (group / "cgroup.procs").read_text().split()]
        c0, t0 = _cpu_s(ident.pid), time.monotonic()
        await asyncio.sleep(4.0)  # a measurement window, not a wait for an event
        used = (_cpu_s(ident.pid) - c0) / (time.monotonic() - t0)
        stat = dict(line.split() for line in (group / "cpu.stat").read_text().splitlines())
        print(f"cpu_max 0.2: the busy loop used {used:.3f} CPU over 4 s; throttled {stat['nr_throttled']} times")
        assert used <= 0.25
        assert int(stat["nr_throttled"]) > 0  # held back by its quota, not merely by a loaded machine
        await b.stop("busy", timeout_s=5.0)
        assert not group.exists()  # removed with the unit
    finally:
        with contextlib.suppress(Exception):
            await b.stop("busy", timeout_s=1.0)
        await b.close()
    assert _v1_dirs(b.instance) == []


class Running:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.records: list[tuple[float, str, str, dict[str, Any]]] = []
        engine.subscribe(lambda s, k, u, body: self.records.append((time.monotonic(), k, u, dict(body))))

    def pid(self, name: str) -> int:
        ident = self.engine.units[name].backend.identity(name)
        assert ident is not None
        return int(ident.pid)

    def found(self, kind: str, unit: str, **match: Any) -> list[dict[str, Any]]:
        return [b for _, k, u, b in self.records
                if k == kind and u == unit and all(b.get(key) == v for key, v in match.items())]


@contextlib.asynccontextmanager
async def supervising(tmp_path: Path, text: str) -> AsyncIterator[Running]:
    loaded = load_text(text, tmp_path / "enmei.toml")
    journal = journal_for(loaded).open()
    engine = Engine(loaded, journal=journal)
    running = Running(engine)
    task = asyncio.create_task(engine.run())
    try:
        yield running
    finally:
        engine.stop()
        await wait_for(task, scaled(60))
        journal.close()
    assert verify(loaded.journal_path).ok


async def test_pids_max_makes_a_fork_bomb_fail_inside_the_unit_while_another_units_probe_keeps_its_latency(
        tmp_path: Path) -> None:
    """Before the cage the bomb forked its 200 children (the test's own bound) and nothing failed."""
    (port,) = free_ports(1)
    out = tmp_path / "bomb.json"
    text = f"""
[units.web]
command = ["{PY}", "-m", "enmei.demo.service", "--port", "{port}"]
listen = ["127.0.0.1:{port}"]
start_s = 0.3
[[units.web.probes]]
kind = "http"
url = "http://127.0.0.1:{port}/health"
interval_s = 0.2
timeout_s = 2.0
fail_after = 3

[units.bomb]
command = ["{PY}", "-c", {json.dumps(BOMB)}, "{out}"]
pids_max = 20
autostart = false
"""
    async with supervising(tmp_path, text) as r:
        engine = r.engine
        assert await auntil(lambda: "web" in engine.units and engine.units["web"].state is UnitState.RUNNING,
                            30, fail=False)
        web_pid = r.pid("web")
        reader = Reader(engine.journal.path)
        try:
            assert await auntil(lambda: len(_latencies(reader)) >= 10, 60, fail=False), "no probe samples of web"
            before = _latencies(reader)
            t_bomb, wall_bomb = time.monotonic(), time.time()
            await engine.units["bomb"].backend.start("bomb", engine.units["bomb"].spec)
            assert await auntil(out.exists, 60, fail=False), "the bomb never reported"
            result = json.loads(out.read_text())
            assert await auntil(lambda: len(_latencies(reader, wall_bomb)) >= 15, 60, fail=False), \
                "web's probe stalled"
            during = _latencies(reader, wall_bomb)
        finally:
            reader.close()
        print(f"fork bomb under pids_max 20: {result}; web's http probe latency median "
              f"{statistics.median(before) * 1000:.1f} ms before, {statistics.median(during) * 1000:.1f} ms "
              f"during ({len(during)} probes in {time.monotonic() - t_bomb:.1f} s)")
        assert result["errno"] is not None and result["forked"] < 20  # fork failed inside the unit
        assert r.pid("web") == web_pid  # web was never restarted: its probe never failed enough
        assert not r.found("verdict", "web")
        assert statistics.median(during) < max(5 * statistics.median(before), 0.25)
        await engine.units["bomb"].backend.stop("bomb", timeout_s=5.0)


def _latencies(reader: Reader, since_wall: float = 0.0) -> list[float]:
    return [v for _, v in reader.samples("web", "http.latency_s", since_wall=since_wall)]


async def test_memory_max_oom_kills_a_leak_and_enmei_restarts_it_with_the_reason_oom(tmp_path: Path) -> None:
    """Before the cage the leak grew to its own bound (1 GiB) and stayed up: no exit, no restart."""
    starts = tmp_path / "starts"
    text = f"""
[units.leak]
command = ["{PY}", "-c", {json.dumps(LEAK)}, "{starts}"]
memory_max = "64MiB"
start_s = 0.2
"""
    async with supervising(tmp_path, text) as r:
        assert await auntil(lambda: len(r.found("unit.event", "leak", event="exited")) >= 1, 60, fail=False), \
            "the leak was never killed"
        exited = r.found("unit.event", "leak", event="exited")[0]
        assert exited["reason"] == "oom" and exited["signal"] == "SIGKILL"
        assert await auntil(lambda: any(d.get("action") == "restart" for d in r.found("decision", "leak")),
                            30, fail=False)
        restart = next(d for d in r.found("decision", "leak") if d.get("action") == "restart")
        assert "oom" in restart["reason"]
        assert await auntil(lambda: starts.exists() and len(starts.read_text().split()) >= 2, 60, fail=False)
        print(f"memory_max 64MiB: exited {exited}; decision reason {restart['reason']!r}")


POLICY = """load("@enmei", "restart")

def on_exit(event, ctx):
    return [restart(ctx.unit, delay_s = 0.2)]
"""


def _groups(path: Path) -> dict[str, str]:
    """controller (v1) or "" (v2) -> cgroup path, from a copy of /proc/<pid>/cgroup."""
    out = {}
    for line in path.read_text().splitlines():
        num, ctrls, where = line.split(":", 2)
        for c in ctrls.split(",") if num != "0" else [""]:
            out[c] = where
    return out


def _tids_in(group: Path) -> set[int]:
    return {int(x) for x in (group / "tasks").read_text().split()}


def test_helpers_run_in_the_cage_not_in_the_units_limits_and_the_cage_is_removed(
        tmp_path: Path, procs: Procs) -> None:
    """pre_start, an exec probe and the policy sandbox process join enmei-<instance>/cage (cpu, pids), the
    policy thread joins its cpu group, the loop thread stays; all of it is removed when enmei stops.
    Before the cage they ran in enmei's own cgroups (the exec probe: in the unit's, under its limits)."""
    pre, probe = tmp_path / "pre.cgroup", tmp_path / "probe.cgroup"
    (tmp_path / "policy.star").write_text(POLICY)
    cfg = tmp_path / "enmei.toml"
    cfg.write_text(f"""[supervisor]
policy = "policy.star"

[units.svc]
command = ["/bin/sh", "-c", "sleep 1; exit 3"]
pre_start = ["/bin/sh", "-c", "cat /proc/self/cgroup > {pre}"]
cpu_max = "0.2"
pids_max = 10
start_s = 0.1
[[units.svc.probes]]
kind = "exec"
command = ["/bin/sh", "-c", "cat /proc/self/cgroup > {probe}.tmp; mv {probe}.tmp {probe}"]
interval_s = 0.3
""")
    with open(tmp_path / "up.log", "ab") as log:
        up = procs.popen([PY, "-m", "enmei", "up", "--plain", str(cfg)], stdout=log, stderr=log)
    assert wait_until(lambda: pre.exists() and probe.exists(), scaled(60)), (tmp_path / "up.log").read_text()
    own = parse_v1_own(Path(f"/proc/{up.pid}/cgroup").read_text())
    mounts = parse_v1_mounts(Path("/proc/self/mountinfo").read_text())
    for helper in (pre, probe):
        seen = _groups(helper)
        for ctrl in ("cpu", "pids"):
            assert seen[ctrl].endswith("/cage") and "/enmei-" in seen[ctrl], (helper.name, seen)
    seen = _groups(probe)
    assert seen[""].endswith("/unit-svc")  # still tracked in the unit's v2 cgroup (this host's cage is v1)
    base = Path(mounts["cpu"][0]) / seen["cpu"].lstrip("/")
    instance = base.parent.name
    # No unit asks for memory_max: the memory hierarchy (a cgroup enmei did not make) is left untouched.
    assert not (Path(mounts["memory"][0]) / own["memory"].lstrip("/") / instance).exists()
    instance_dirs = [Path(mounts[c][0]) / _groups(probe)[c].lstrip("/").rsplit("/", 1)[0] for c in ("cpu", "pids")]

    def sandbox() -> psutil.Process | None:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(up.pid).children(recursive=True):
                if "--serve" in child.cmdline():
                    return child
        return None

    # The policy answers the unit's exits: its sandbox process and its evaluation thread are caged.
    assert wait_until(lambda: (s := sandbox()) is not None and s.pid in _tids_in(base), scaled(60))

    def caged_threads() -> set[int]:
        return _tids_in(base) & ({int(t) for t in os.listdir(f"/proc/{up.pid}/task")} - {up.pid})

    assert wait_until(lambda: bool(caged_threads()), scaled(60))
    assert up.pid not in _tids_in(base)  # the event loop's thread stays in enmei's own cgroup
    assert not own["cpu"].endswith("/cage")
    shares, quota = ((base / f).read_text().strip() for f in ("cpu.shares", "cpu.cfs_quota_us"))
    print(f"helper cage {base}: cpu.shares {shares}, quota {quota} us per 0.1 s")
    up.send_signal(signal.SIGTERM)
    assert up.wait(scaled(60)) == 0, (tmp_path / "up.log").read_text()
    assert [d for d in instance_dirs if d.exists()] == []  # the cage and the units' groups are gone


async def test_a_limit_the_host_cannot_apply_is_noticed_once_per_unit_and_the_unit_runs(tmp_path: Path) -> None:
    """A host without the controllers (a /proc whose process is in no v1 hierarchy, v2 without them)."""
    fake = tmp_path / "proc"
    fake.mkdir()
    (fake / "cgroup").write_text("0::/\n")
    (fake / "mountinfo").write_text("")
    cfg = '[units.small]\ncommand = ["/bin/sleep", "600"]\nmemory_max = "64MiB"\npids_max = 5\n'
    spec = load_text(cfg, tmp_path / "enmei.toml").config.units["small"]
    events: list[UnitEvent] = []
    b = ProcessBackend(clock=SystemClock(), state_dir=tmp_path / "state", emit=events.append)
    b.cage = ResourceCage(b.instance, lambda: b.cgroups, proc=fake)
    try:
        for _ in range(2):
            await b.start("small", spec)
            assert b.alive("small")
            await b.stop("small", timeout_s=5.0)
    finally:
        with contextlib.suppress(Exception):
            await b.stop("small", timeout_s=1.0)
        await b.close()
    first, second = [e.detail for e in events if e.kind is UnitEventKind.STARTED]
    assert first["limits"] == {} and second["limits"] == {}
    assert [n.split(":")[0] for n in first["cage_notices"]] == ["memory_max is not applied", "pids_max is not applied"]
    assert "no memory controller" in first["cage_notices"][0]
    assert "cage_notices" not in second  # journaled once per unit


def test_enmei_check_shows_a_notice_for_each_limit_a_non_root_enmei_cannot_apply() -> None:
    """As an unprivileged user nothing beneath the cgroups enmei is in is writable here: three notices, each
    with file, line and key, and the config is still fine (exit 0)."""
    where = Path(tempfile.mkdtemp(prefix="enmei-cage-"))
    try:
        where.chmod(0o755)
        cfg = where / "enmei.toml"
        cfg.write_text('[units.busy]\ncommand = ["/bin/sleep", "1"]\ncpu_max = 0.5\nmemory_max = "64MiB"\n'
                       "pids_max = 10\n")
        cfg.chmod(0o644)
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            PY, "-m", "enmei", "check", str(cfg)], capture_output=True, text=True, timeout=scaled(120),
                           check=False, env={**os.environ, "HOME": "/"})
        assert r.returncode == 0, r.stderr
        err = " ".join(r.stderr.split())
        for line, key in ((3, "cpu_max"), (4, "memory_max"), (5, "pids_max")):
            assert f"notice {cfg}:{line}: units.busy.{key}: {key} will not be applied" in err, err
        assert "not writable" in err
    finally:
        shutil.rmtree(where)


async def test_an_adopted_unit_keeps_its_limit_groups_and_they_go_with_it(tmp_path: Path) -> None:
    """A supervisor that closes leaves the unit (and its groups) running; the next one adopts the unit with
    its groups, sees an OOM kill in them, and removes them when the unit is gone."""
    ready = tmp_path / "ready"
    grow = tmp_path / "grow"
    script = ("import os, sys, time\nopen(sys.argv[1], 'w').close()\nhoard = []\n"
              "while not os.path.exists(sys.argv[2]):\n    time.sleep(0.05)\n"
              "for _ in range(256):\n    hoard.append(bytearray(4 << 20))\n    time.sleep(0.01)\ntime.sleep(600)\n")
    cfg = f'[units.a]\ncommand = ["{PY}", "-c", {json.dumps(script)}, "{ready}", "{grow}"]\nmemory_max = "64MiB"\n'
    spec = load_text(cfg, tmp_path / "enmei.toml").config.units["a"]
    first = ProcessBackend(clock=SystemClock(), state_dir=tmp_path / "state", emit=lambda e: None)
    ident = await first.start("a", spec)
    held: subprocess.Popen[bytes] | None = None
    try:
        assert await asyncio.to_thread(wait_until, ready.exists, scaled(20))
        assert first.cage is not None
        group = first.cage.v1["memory"] / "unit-a"
        held = first._units["a"].popen  # kept: not collected as "still running"; the adopter reaps the child
        await first.close()  # the unit runs on, in its groups
        assert group.exists() and psutil.pid_exists(ident.pid)
        events: list[UnitEvent] = []
        second = ProcessBackend(clock=SystemClock(), state_dir=tmp_path / "state", emit=events.append)
        try:
            assert await second.adopt("a", spec, ident)
            grow.touch()
            assert await auntil(lambda: any(e.kind is UnitEventKind.EXITED for e in events), 60, fail=False)
            exited = next(e for e in events if e.kind is UnitEventKind.EXITED)
            assert exited.detail["reason"] == "oom"
            assert await auntil(lambda: not group.exists(), 30, fail=False)
        finally:
            with contextlib.suppress(Exception):
                await second.stop("a", timeout_s=1.0)
            await second.close()
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(ident.pid, signal.SIGKILL)
            os.waitpid(ident.pid, 0)
    assert held is not None and held.poll() is not None
    assert _v1_dirs(first.instance) == []


def _cgroups_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cgroup").read_text().strip().replace("\n", "; ")
    except OSError as exc:
        return f"(unreadable: {exc})"


def test_busy_units_cannot_push_a_helper_below_its_weight(request: pytest.FixtureRequest) -> None:
    """A helper in the cage and the same helper outside it, side by side beside six busy processes of a
    unit without cpu_max: the caged one gets at least about twice the CPU (its weight is two units'),
    whatever else loads the machine. Before the cage both got the same share.

    All eight are pinned to one CPU of this process's: a weight decides only between tasks that wait for
    the same CPU. Unpinned on a host with more CPUs than its CPU quota (a container limited by
    ``cpu.cfs_quota_us`` above enmei's cgroup), every process gets a CPU of its own and the quota
    throttles them all alike: weights do not matter there, for the cage or for anything else (CI, with
    the processes unpinned, measured 0.23 in the cage and 0.24 outside). Each is a session of its own, as
    enmei starts units: where the kernel groups a session's tasks (``sched_autogroup``) that is how units
    compete, and where it does not (CI) every task weighs the same anyway; pinned but in one session,
    the seven shared one autogroup here and hid that the cage weighed as much as one task (CI: 0.12 in
    the cage, 0.13 outside)."""
    spin = [PY, "-c", "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 8: pass"]
    instance = hashlib.sha256(f"{request.node.nodeid}{os.getpid()}".encode()).hexdigest()[:16]
    cage = ResourceCage(instance, None)
    install_cage(cage)
    cpu = min(os.sched_getaffinity(0))
    started: list[subprocess.Popen[bytes]] = []
    try:
        helpers = cage.helpers
        where = f"cage support {cage.support()}, helper cage notices {helpers.notices}"
        assert helpers.cpu_v1 is not None or (helpers.has_v2 and "cpu" in cage.v2), where
        started += [subprocess.Popen(spin, start_new_session=True) for _ in range(6)]  # the unit's processes
        caged = subprocess.Popen(caged_argv(spin), start_new_session=True)
        free = subprocess.Popen(spin, start_new_session=True)
        started += [caged, free]
        for p in started:
            os.sched_setaffinity(p.pid, {cpu})
        time.sleep(1.0)  # a measurement window, not a wait for an event
        cage_group = f"/enmei-{instance}/cage"
        where += f"; the caged helper's cgroups: {_cgroups_of(caged.pid)}; the free one's: {_cgroups_of(free.pid)}"
        assert any(line.endswith(cage_group) for line in _cgroups_of(caged.pid).split("; ")), where
        pc, pf = psutil.Process(caged.pid), psutil.Process(free.pid)
        c0, f0, t0 = _cpu_s(pc.pid), _cpu_s(pf.pid), time.monotonic()
        time.sleep(3.0)
        took = time.monotonic() - t0
        in_cage, outside = (_cpu_s(pc.pid) - c0) / took, (_cpu_s(pf.pid) - f0) / took
        print(f"beside 6 busy unit processes on CPU {cpu}: a helper got {in_cage:.2f} CPU in the cage, "
              f"{outside:.2f} outside it")
        assert in_cage >= 1.4 * outside, where
    finally:
        for p in started:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait()
        install_cage(None)
        cage.remove()
    assert _v1_dirs(instance) == []

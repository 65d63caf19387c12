"""The sandbox process: memory bombs, hangs and crashes end in a clear error; this process (the
supervisor's) goes on, the same policy keeps answering, and every sandbox process is reaped."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from enmei.errors import PolicyError
from enmei.model import UnitEvent, UnitEventKind
from enmei.policy.core import Limits
from enmei.policy.failure import PolicyFailure
from enmei.policy.manager import PolicyManager
from enmei.policy.program import build
from enmei.policy.sandbox import WorkerSandbox
from unit.policy.common import view

pytestmark = pytest.mark.integration

EXIT = UnitEvent("api", UnitEventKind.EXITED, 1000.0, {"code": 1})
# k is 1 for the bomb's event: sizes computed at run time (constants would be folded at load).
HEADER = 'load("@enmei", "restart")\ndef on_exit(event, ctx):\n    k = int(event.mono) // 1000\n    if k:\n'


@pytest.fixture
def open_manager(tmp_path: Path) -> Iterator[Callable[..., PolicyManager]]:
    made: list[PolicyManager] = []

    def make(body: str, **kw: object) -> PolicyManager:
        path = tmp_path / "p.star"
        path.write_text(HEADER + body + "    return [restart(ctx.unit, why = 'fine')]\n")
        m = PolicyManager(path, smoke=False, **kw)  # type: ignore[arg-type]
        made.append(m)
        m.drain_notices()
        return m

    yield make
    for m in made:
        m.close()


def _error(m: PolicyManager) -> dict[str, object]:
    decided = m.decide(EXIT, view())
    assert [(d.action, d.policy) for d in decided] == [("restart", "builtin-1")]
    [notice] = [n for n in m.drain_notices() if n["event"] == "error"]
    return notice


def _still_answers(m: PolicyManager, body_ran: bool = True) -> None:
    quiet = UnitEvent("api", UnitEventKind.EXITED, 10.0, {"code": 1})  # mono <= 999: the bomb is skipped
    [d] = m.decide(quiet, view())
    assert (d.reason, d.policy) == ("fine", m.version)


@pytest.mark.parametrize("bomb", [
    "        x = [0] * (k << 28)\n",  # one instruction, 2 GiB
    "        x = 'ab' * (k << 30)\n",  # one instruction, 2 GiB
    "        x = ['y' * 1000]\n        for i in range(40):\n            x = x + x\n",  # doubling
    "        x = [[0] * 1000 for i in range(1 << 20)]\n",  # growth step by step
])
def test_a_memory_bomb_is_stopped_with_a_clear_error(open_manager: Callable[..., PolicyManager], bomb: str) -> None:
    m = open_manager(bomb, limits=Limits(memory_mib=128, max_steps=10**9, time_s=20.0))
    before = psutil.Process().memory_info().rss
    notice = _error(m)
    assert notice["kind"] == "memory", notice
    assert "memory" in str(notice["error"]) and str(notice["error"]).startswith(str(m.path))
    assert psutil.Process().memory_info().rss - before < 64 * 2**20  # it never reached this process
    _still_answers(m)


def test_a_memory_bomb_at_load_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "p.star"
    path.write_text("BIG = 'x' * 2000000000\n")
    with pytest.raises(PolicyError) as err:
        PolicyManager(path)
    assert getattr(err.value, "kind", None) == "memory" and "memory allocation" in str(err.value)


def test_an_evaluation_that_never_answers_is_killed_and_the_policy_reloaded(
        open_manager: Callable[..., PolicyManager]) -> None:
    # One long instruction (no check between): only the kill stops it.
    slow = "        x = ('ab' * (k * 20000000)).replace('a', 'ccc').replace('c', 'dd').replace('d', 'ee')\n"
    m = open_manager(slow, sandbox=lambda s, lim: WorkerSandbox(s, lim, kill_after_s=0.05))
    box = m._box
    assert isinstance(box, WorkerSandbox)
    pid = box.pid
    t0 = time.monotonic()
    notice = _error(m)
    assert notice["kind"] == "time" and "was killed" in str(notice["error"])
    assert time.monotonic() - t0 < 0.5
    assert (pid is not None and not psutil.pid_exists(pid)) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    _still_answers(m)
    assert box.restarts == 1


def test_endless_loops_and_recursion_are_stopped_in_the_sandbox(open_manager: Callable[..., PolicyManager]) -> None:
    m = open_manager("        n = 0\n        for i in range(1 << 20):\n            for j in range(1 << 20):\n"
                     "                n += 1\n",
                     limits=Limits(max_steps=300_000, time_s=10.0))
    assert _error(m)["kind"] == "steps"
    _still_answers(m)


def test_sandbox_processes_are_reaped(tmp_path: Path) -> None:
    spec = build(None)
    box = WorkerSandbox(spec, Limits())
    pid = box.pid
    assert pid is not None and psutil.pid_exists(pid)
    box.close()
    assert not psutil.pid_exists(pid)
    box2 = WorkerSandbox(spec, Limits())
    pid2 = box2.pid
    del box2  # dropped without close: the finalizer reaps it
    import gc

    gc.collect()
    assert pid2 is not None and not psutil.pid_exists(pid2)


def test_a_sandbox_process_that_dies_is_replaced(open_manager: Callable[..., PolicyManager]) -> None:
    m = open_manager("        pass\n")
    box = m._box
    assert isinstance(box, WorkerSandbox) and box.pid is not None
    os.kill(box.pid, 9)
    notice = _error(m)  # the call finds it dead: an error, the fallback acts
    assert notice["kind"] in ("crash", "memory")
    _still_answers(m)


def test_a_policy_that_fails_to_load_in_the_sandbox_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "p.star"
    path.write_text("def on_exit(event, ctx):\n    return []\nX = 1 // 0\n")
    with pytest.raises(PolicyFailure) as err:
        WorkerSandbox(build(path), Limits())
    assert (err.value.kind, err.value.file, err.value.line) == ("load", str(path), 3)

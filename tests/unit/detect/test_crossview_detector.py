"""The crossview detector: a suspect must persist across comparisons; clean and inconclusive are counted."""

from __future__ import annotations

import json

from enmei.detect.crossview import CrossviewDetector, CrossviewOptions
from enmei.model import Observation, VerdictKind


def obs(t: float, suspects: list[dict[str, object]] = (), *, ok: bool = True, compared: bool = True,  # type: ignore[assignment]
        error: str | None = None) -> Observation:
    lines = tuple(json.dumps(s) for s in suspects)
    return Observation("vm", "crossview", ok, t, t, {"compared": 1.0 if compared else 0.0}, error, lines)


def s(pid: int, start: float = 1.0, how: str = "proc") -> dict[str, object]:
    return {"key": f"{pid}:{int(start * 1e9)}", "pid": pid, "comm": "sleep", "ppid": 1, "uid": 0, "start_s": start,
            "how": how}


def det(**kw: object) -> CrossviewDetector:
    return CrossviewDetector("vm", CrossviewOptions.model_validate({"kind": "crossview", **kw}))


def test_a_suspect_that_persists_is_a_hidden_process_once() -> None:
    d = det(confirm=2)
    assert d.feed(obs(1, [s(42)])).verdicts == ()
    j = d.feed(obs(2, [s(42)]))
    assert [v.kind for v in j.verdicts] == [VerdictKind.HIDDEN_PROCESS]
    v = j.verdicts[0]
    assert v.evidence["pid"] == 42 and v.evidence["how"] == "proc" and v.evidence["comparisons_in_a_row"] == 2
    assert "missing from its /proc" in v.summary
    assert d.feed(obs(3, [s(42)])).verdicts == ()  # said once


def test_a_suspect_seen_once_is_a_race_not_a_verdict() -> None:
    d = det(confirm=2, clean_after=3)
    kinds = []
    for t, sus in enumerate([[s(5)], [s(6)], [s(7, 2.0)], [], [s(5, 9.0)], []]):
        kinds += [v.kind for v in d.feed(obs(t, sus)).verdicts]
    assert VerdictKind.HIDDEN_PROCESS not in kinds
    assert kinds == [VerdictKind.CLEAN, VerdictKind.CLEAN]


def test_a_pid_reused_by_another_process_starts_again() -> None:
    d = det(confirm=2)
    d.feed(obs(1, [s(42, 1.0)]))
    assert d.feed(obs(2, [s(42, 5.0)])).verdicts == ()  # same pid, another start: another process


def test_no_comparison_is_inconclusive_never_hidden() -> None:
    d = det(max_inconclusive=2)
    d.feed(obs(1, [s(42)]))
    assert d.feed(obs(2, compared=False)).verdicts == ()  # no new listing yet: nothing to say
    assert d.feed(obs(3, ok=False, compared=False, error="the task list loops")).verdicts == ()
    j = d.feed(obs(4, ok=False, compared=False, error="the task list loops"))
    assert [v.kind for v in j.verdicts] == [VerdictKind.INCONCLUSIVE]
    assert j.verdicts[0].evidence["reason"] == "the task list loops"


def test_garbage_lines_and_other_probes_are_ignored() -> None:
    d = det(confirm=1)
    bad = Observation("vm", "crossview", True, 1.0, 1.0, {"compared": "x"}, None, ("{", "[1]", '{"key": 3}'))  # type: ignore[dict-item]
    assert d.feed(bad).verdicts == ()
    assert d.feed(Observation("vm", "http", True, 2.0, 2.0, {}, None, (json.dumps(s(1)),))).verdicts == ()
    assert [v.kind for v in d.feed(obs(3, [s(9, how="list")])).verdicts] == [VerdictKind.HIDDEN_PROCESS]
    json.dumps(d.state())


def test_a_module_that_persists_is_a_hidden_module() -> None:
    d = det(confirm=2)
    m = {"key": "mod:rk@0xffffffffc0201000", "what": "module", "name": "rk", "address": "0xffffffffc0201000",
         "state": "live", "how": "list"}
    assert d.feed(obs(1, [m, s(42)])).verdicts == ()
    j = d.feed(obs(2, [m]))  # the process was a race; the module persists
    assert [v.kind for v in j.verdicts] == [VerdictKind.HIDDEN_MODULE]
    v = j.verdicts[0]
    assert v.evidence["name"] == "rk" and v.evidence["how"] == "list" and v.evidence["what"] == "module"
    assert "on no module list" in v.summary and "rk" in v.summary
    assert d.feed(obs(3, [m])).verdicts == ()


def test_a_file_that_persists_is_a_hidden_file() -> None:
    d = det(confirm=2)
    f = {"key": "file:/data/bin/.enmei-stash", "what": "file", "path": "/data/bin/.enmei-stash", "how": "ls"}
    assert d.feed(obs(1, [f])).verdicts == ()
    (v,) = d.feed(obs(2, [f])).verdicts
    assert v.kind == VerdictKind.HIDDEN_FILE and v.evidence["path"] == "/data/bin/.enmei-stash"
    assert "not in its ls" in v.summary

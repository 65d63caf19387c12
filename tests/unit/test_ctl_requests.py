"""The ctl server's answers, without a socket: the engine rig (fake backend, fake clock) and
``ControlServer._answer`` on request lines. The socket, its mode and hostile clients are in
tests/integration/test_ctl.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from enmei.ctl.protocol import CtlError, decode, encode
from enmei.ctl.server import ControlServer, log_tail
from enmei.model import UnitState
from support.harness import start_rig

CONFIG = """
[units.a]
command = ["/bin/true"]
start_s = 1.0
[units.b]
command = ["/bin/true"]
start_s = 1.0
"""


def test_lines_are_json_objects_or_a_clear_error() -> None:
    assert decode(encode({"op": "status"})) == {"op": "status"}
    for bad, says in ((b"[1]\n", "a message is a JSON object, not list"), (b"{nope\n", "not a JSON line")):
        with pytest.raises(CtlError, match=re.escape(says)):
            decode(bad)


def test_a_log_tail_is_the_newest_lines_and_names_what_is_missing(tmp_path: Path) -> None:
    log = tmp_path / "a.stderr.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert log_tail(log, 3)["lines"] == ["line 97", "line 98", "line 99"]
    assert log_tail(tmp_path / "none.log", 3)["error"] == "no log yet"
    assert log_tail(None, 3)["error"] == "this backend captures no such log"


async def test_answers_name_units_ops_and_bounds(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, CONFIG)
    server = ControlServer(rig.engine, tmp_path)
    try:
        await rig.advance(1.5)

        async def ask(req: object) -> dict[str, object]:
            return await server._answer(json.dumps(req).encode() + b"\n")

        status = await ask({"op": "status"})
        assert status["ok"] is True
        units = status["units"]
        assert isinstance(units, list) and [u["name"] for u in units] == ["a", "b"]
        assert units[0]["state"] == "running" and units[0]["breaker_failures"] == 4
        assert await ask({"op": "start", "unit": "zz"}) == {"ok": False, "error": "no unit named 'zz' (units: a, b)"}
        assert (await ask({"op": "fly"}))["error"].startswith("unknown op 'fly'")  # type: ignore[union-attr]
        assert (await ask({"op": "logs", "unit": "a", "lines": 0}))["error"] == "lines must be from 1 to 10000"
        assert "stream must be one of" in str((await ask({"op": "logs", "unit": "a", "stream": "x"}))["error"])
        assert (await ask({"op": "reset"}))["error"] == "reset needs a unit"
        stop = await ask({"op": "stop", "unit": "a"})
        assert stop["ok"] is True and stop["action"] == "stop" and isinstance(stop["seq"], int)
        assert rig.engine.units["a"].state is UnitState.STOPPED
        assert "operator:ctl" in str(rig.bodies("decision", "a")[-1]["policy"])
    finally:
        await rig.close()


async def test_an_update_of_a_process_unit_is_refused_with_the_capability_it_lacks(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, CONFIG)
    server = ControlServer(rig.engine, tmp_path)
    try:
        await rig.advance(1.5)
        answer = await server._answer(json.dumps({"op": "update", "unit": "a", "image": "v2",
                                                  "ignored": 1}).encode() + b"\n")
        assert answer["ok"] is False
        error = str(answer["error"])
        assert error.startswith("update a: ") and "shadow_update" in error, error
        decision = rig.bodies("decision", "a")[-1]
        assert decision["action"] == "shadow_update" and decision["args"] == {"image": "v2"}
        assert rig.engine.units["a"].state is UnitState.RUNNING
    finally:
        await rig.close()

"""Fuzzing what comes from places enmei does not trust: a guest's console and network frames, QEMU's
replies, policy source text, and requests to the web API. Each may only fail with enmei's own errors."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enmei.errors import EnmeiError, PolicyError, VisorError
from enmei.visor.qemu.console import ConsoleReader, parse_phase
from enmei.visor.qemu.monitor_api import MonitorApi
from enmei.visor.qemu.netcount import PcapCounter

N = int(os.environ.get("ENMEI_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=N, deadline=None, suppress_health_check=[HealthCheck.too_slow])

console_bytes = st.lists(st.one_of(
    st.binary(max_size=300),
    st.builds(lambda name, t: f"enmei-phase: {name} t={t}\n".encode(),
              st.text(alphabet="abcdefghij-", min_size=1, max_size=12),
              st.text(alphabet="0123456789.", max_size=10)),
    st.sampled_from([b"enmei-phase: service-ready t=1.2.3\n", b"enmei-phase: kernel t=.\n", b"\r\n", b"\xff\xfe"]),
), max_size=10)


@FUZZ
@given(console_bytes)
def test_guest_console_output(chunks: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "console.log"
        reader = ConsoleReader(path)
        for i, chunk in enumerate(chunks):
            with open(path, "ab") as f:
                f.write(chunk)
            for mark in reader.poll(float(i)):
                assert mark.uptime_s is None or mark.uptime_s >= 0
            for line in reader.tail():
                parse_phase(line)


def test_a_console_line_without_end_does_not_grow_without_bound() -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "console.log"
        reader = ConsoleReader(path)
        for _ in range(8):
            with open(path, "ab") as f:
                f.write(b"x" * (1 << 20))
            reader.poll(0.0)
        assert len(reader._partial) <= 1 << 16


PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)


@FUZZ
@given(st.lists(st.binary(max_size=1600), max_size=12), st.integers(1, 64))
def test_guest_network_frames_in_pcap(frames: list[bytes], split: int) -> None:
    """Frames are the guest's (any bytes); QEMU writes the pcap around them. Fed in arbitrary pieces."""
    stream = PCAP_HEADER + b"".join(struct.pack("<IIII", 0, 0, len(f), len(f)) + f for f in frames)
    counter = PcapCounter()
    for i in range(0, len(stream), split):
        counter.feed(stream[i:i + split])
    assert counter.packets == len(frames)
    assert counter.bytes == sum(len(f) for f in frames)


@FUZZ
@given(st.binary(min_size=24, max_size=200))
def test_a_damaged_pcap_file_is_an_error_not_a_crash(data: bytes) -> None:
    counter = PcapCounter()
    problem: ValueError | None = None
    try:
        counter.feed(data)
    except ValueError as exc:
        problem = exc
    assert problem is None or "pcap" in str(problem)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=10)),
    lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=10), c, max_size=4)),
    max_leaves=15)
qmp_replies = st.one_of(json_values, st.lists(st.dictionaries(
    st.sampled_from(["node-name", "device", "qdev", "stats"]),
    st.one_of(json_values, st.dictionaries(st.sampled_from(["rd_bytes", "wr_bytes", "rd_total_time_ns"]),
                                           json_values, max_size=3)), max_size=4), max_size=3))


class _Qmp:
    def __init__(self, reply: Any) -> None:
        self.reply = reply

    async def execute(self, cmd: str, args: Any = None, **kw: Any) -> Any:
        return self.reply


class _Machine:
    def __init__(self, reply: Any) -> None:
        self._qmp = _Qmp(reply)

    def qmp(self) -> _Qmp:
        return self._qmp


class _Api(MonitorApi):
    """The real monitor API; only the machine lookup (the backend's) is replaced."""

    def __init__(self, reply: Any) -> None:
        self.machine = _Machine(reply)

    def _require(self, name: str, action: str) -> Any:
        return self.machine


@FUZZ
@given(qmp_replies)
def test_qmp_replies_to_block_stats(reply: Any) -> None:
    try:
        out = asyncio.run(_Api(reply).block_stats("vm"))
    except VisorError:
        return
    for dev in out.values():
        assert all(isinstance(v, float) for v in dev.values())


@settings(max_examples=max(30, N // 4), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.text(max_size=200),
    st.builds(lambda a, b, c: f"def on_exit(event, ctx):\n    {a}\n    return [{b}]\n{c}",
              st.sampled_from(["x = 1", "x = [0] * 10", "fail('boom')", "for i in range(10): pass", "x = {}",
                               "x = ctx.units", "x = event.detail"]),
              st.sampled_from(["", "1", "None", "{'action': 'restart'}", "'x'"]),
              st.text(alphabet="def():= \n\tabc[]0123456789'\"", max_size=40)),
))
def test_policy_source_text(source: str) -> None:
    from enmei.policy.manager import open_policy
    from enmei.policy.sandbox import InProcessSandbox

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "p.star"
        path.write_text(source)
        problem: PolicyError | None = None
        try:
            open_policy(path, sandbox=InProcessSandbox).close()
        except PolicyError as exc:
            problem = exc
        assert problem is None or str(problem).startswith(str(path)), problem


@settings(max_examples=max(30, N // 4), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
       st.sampled_from(["/api/units", "/api/units/web", "/api/units/web/charts", "/api/units/web/logs",
                        "/api/units/web/snapshots", "/api/units/web/actions/restart", "/api/units/nope/actions/stop",
                        "/api/incidents", "/api/records", "/api/journal", "/api/policy", "/", "/units/web",
                        "/timeline", "/journal", "/metrics", "/api/units/web/actions/%00", "/api/records/../x"]),
       st.dictionaries(st.sampled_from(["limit", "since", "unit", "kind", "window_s", "metric", "lines", "q"]),
                       st.one_of(st.text(max_size=12), st.integers(-10**12, 10**12).map(str)), max_size=4),
       st.one_of(st.none(), st.binary(max_size=100), st.just(b'{"delay_s": "x"}'), st.just(b'{"zz": 1}')),
       st.booleans())
def test_web_api_inputs(method: str, path: str, params: dict[str, str], body: bytes | None, auth: bool) -> None:
    from unit.web.rig import TOKEN, web_rig  # the web tests' real Engine + app rig

    async def go() -> None:
        with tempfile.TemporaryDirectory() as d:
            async with web_rig(Path(d)) as rig:
                headers = {"Authorization": f"Bearer {TOKEN}"} if auth else {}
                if body is not None:
                    headers["Content-Type"] = "application/json"
                resp = await rig.client.request(method, path, params=params, content=body, headers=headers)
                assert resp.status_code < 500 or resp.status_code == 501, (resp.status_code, resp.text[:300])

    with contextlib.suppress(EnmeiError):
        asyncio.run(go())

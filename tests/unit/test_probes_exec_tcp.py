"""The exec probe and the TCP protocol check (issue 12 item 5), on real loopback sockets and real commands."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import psutil
import pytest
from pydantic import BaseModel

from enmei.clock import SystemClock
from enmei.config.load import load_text
from enmei.config.model import ExecProbe as ExecProbeConfig
from enmei.config.model import TcpProbe as TcpProbeConfig
from enmei.errors import ConfigError
from enmei.monitor import make_probes
from enmei.monitor import registry as probe_registry
from enmei.monitor.command import ExecProbe
from enmei.monitor.tcp import TcpProbe

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _pong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    line = await reader.readline()
    writer.write(b"+PONG\r\n" if line == b"PING\r\n" else b"-ERR unknown command\r\n")
    await writer.drain()
    writer.close()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # A hung service: the connection is accepted (as the kernel does into the backlog), no answer.
    try:
        while await reader.read(100):
            pass  # until the prober gives up and closes
    finally:
        writer.close()


@pytest.fixture
async def pong_port() -> AsyncIterator[int]:
    async for port in _serve(_pong):
        yield port


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    async for port in _serve(_silent):
        yield port


def tcp(port: int, **kw: object) -> TcpProbe:
    return TcpProbe("u", "tcp", 1.0, SystemClock(), host="127.0.0.1", port=port, timeout_s=2.0, **kw)  # type: ignore[arg-type]


async def test_tcp_ping_pong_passes(pong_port: int) -> None:
    obs = await tcp(pong_port, send=b"PING\r\n", expect=b"+PONG").observe()
    assert obs.ok, obs.error
    assert obs.values["answer_s"] >= obs.values["connect_s"] > 0


async def test_tcp_wrong_answer_fails_and_shows_it(pong_port: int) -> None:
    obs = await tcp(pong_port, send=b"HELLO\r\n", expect=b"+PONG").observe()
    assert not obs.ok
    assert obs.error is not None and "+PONG" in obs.error and "-ERR unknown command" in obs.error


async def test_tcp_regex_expectation(pong_port: int) -> None:
    assert (await tcp(pong_port, send=b"PING\r\n", expect_regex=r"^\+P.NG\r\n").observe()).ok
    assert not (await tcp(pong_port, send=b"PING\r\n", expect_regex=r"^OK").observe()).ok


async def test_tcp_a_silent_service_fails_the_check_but_not_a_bare_connect(silent_port: int) -> None:
    # The motivating case: a connection alone cannot see the hang, the exchange does.
    assert (await tcp(silent_port).observe()).ok
    probe = TcpProbe("u", "tcp", 1.0, SystemClock(), host="127.0.0.1", port=silent_port, timeout_s=0.3,
                     send=b"PING\r\n", expect=b"+PONG")
    obs = await probe.observe()
    assert not obs.ok and obs.error is not None and "no answer starting with b'+PONG' within 0.3s" in obs.error
    assert "connect_s" in obs.values


async def test_tcp_refused_is_a_failed_observation() -> None:
    ports = [port async for port in _serve(_pong)]
    obs = await tcp(ports[0], send=b"PING\r\n", expect=b"+PONG").observe()  # the server is gone now
    assert not obs.ok and obs.error


def exec_probe(command: list[str], timeout_s: float = 10.0, **kw: object) -> ExecProbe:
    return ExecProbe("u", "exec", 1.0, SystemClock(), command=command, timeout_s=timeout_s,
                     expect_exit=[0], **kw)  # type: ignore[arg-type]


async def test_exec_passes_on_exit_zero_with_its_output_as_evidence() -> None:
    obs = await exec_probe([sys.executable, "-c", "print('accepting connections')"]).observe()
    assert obs.ok and obs.values["exit_code"] == 0 and obs.lines == ("accepting connections",)


async def test_exec_fails_on_another_code_naming_code_and_output() -> None:
    obs = await exec_probe(["/bin/sh", "-c", "echo first; echo 'no response' >&2; exit 2"]).observe()
    assert not obs.ok and obs.values["exit_code"] == 2
    assert obs.error == "/bin/sh exited 2: no response"
    assert obs.lines == ("first", "no response")


async def test_exec_output_is_bounded() -> None:
    obs = await exec_probe([sys.executable, "-c", "import sys; sys.stdout.write('x' * 1_000_000)"],
                           max_output=100).observe()
    assert obs.ok and sum(len(line) for line in obs.lines) == 100


async def test_exec_timeout_kills_the_command_and_its_children() -> None:
    probe = exec_probe(["/bin/sh", "-c", "sleep 60 & echo $!; sleep 60"], timeout_s=0.5)
    obs = await probe.observe()
    assert not obs.ok and obs.error is not None and "did not finish within 0.5s" in obs.error
    child = int(obs.lines[0])
    # The whole session got SIGKILL: the background child is gone (or a zombie of init, being reaped).
    for _ in range(200):
        if not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE:
            break
        await asyncio.sleep(0.05)
    else:
        os.kill(child, 9)
        pytest.fail("the probe's child survived its timeout")


async def test_exec_a_missing_command_is_a_failed_observation() -> None:
    obs = await exec_probe(["/nonexistent/pg_isready"]).observe()
    assert not obs.ok and obs.error is not None and "/nonexistent/pg_isready" in obs.error


def test_config_exec_and_tcp_keys(tmp_path: object) -> None:
    loaded = load_text("""
[units.db]
command = ["sleep", "60"]
[[units.db.probes]]
kind = "exec"
command = "pg_isready -h 127.0.0.1 -p 5432"
timeout_s = 3
[[units.db.probes]]
kind = "tcp"
port = 6379
send = "PING\\r\\n"
expect = "+PONG"
""", __import__("pathlib").Path(str(tmp_path)) / "enmei.toml")
    ex, tc = loaded.config.units["db"].probes
    assert isinstance(ex, ExecProbeConfig) and ex.command == ["pg_isready", "-h", "127.0.0.1", "-p", "5432"]
    assert isinstance(tc, TcpProbeConfig) and tc.send == "PING\r\n" and tc.expect == "+PONG"
    probes = make_probes("db", loaded.config.units["db"], _NoBackend(), SystemClock())
    assert [type(p) for p in probes] == [ExecProbe, TcpProbe]
    assert [p.name for p in probes] == ["exec", "tcp"]


@pytest.mark.parametrize(("body", "needle"), [
    ('kind = "tcp"\nport = 1\nexpect = "a"\nexpect_regex = "b"', "at most one of 'expect' or 'expect_regex'"),
    ('kind = "tcp"\nport = 1\nexpect_regex = "("', "not a regular expression"),
    ('kind = "exec"\ncommand = []', "command"),
    ('kind = "exec"\ncommand = ["true"]\ntimeout = 3', "timeout"),
])
def test_config_errors_name_the_key(tmp_path: object, body: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_text(f'[units.db]\ncommand = ["sleep", "60"]\n[[units.db.probes]]\n{body}\n',
                  __import__("pathlib").Path(str(tmp_path)) / "enmei.toml")
    text = str(err.value)
    assert needle in text and "enmei.toml:" in text and "units.db.probes[0]" in text, text


def test_a_probe_model_registers_once() -> None:
    with pytest.raises(ValueError, match="already registered"):
        probe_registry.register(ExecProbeConfig, lambda site, cfg: exec_probe(["true"]))

    class Unknown(BaseModel):
        pass

    with pytest.raises(LookupError):
        probe_registry.make(None, Unknown())  # type: ignore[arg-type]


class _NoBackend:
    kind = "process"

    def identity(self, name: str) -> None:
        return None

    def log_path(self, name: str, stream: str) -> None:
        return None

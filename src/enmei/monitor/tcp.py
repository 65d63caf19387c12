"""TCP probe: can a connection be opened, and how fast; optionally a protocol check on it.

A connection alone cannot see a hung Redis (the kernel completes the handshake into the backlog), so
a probe may ``send`` bytes and ``expect`` the answer to start with given bytes (or match a regex): the
whole exchange, connection included, within ``timeout_s``, reading at most ``max_read`` bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re

from enmei.clock import Clock
from enmei.config.model import TcpProbe as TcpProbeConfig
from enmei.model import Observation
from enmei.monitor.base import Probe
from enmei.monitor.registry import ProbeSite, register

__all__ = ["TcpProbe"]


class TcpProbe(Probe):
    """Connect to ``host:port``; ok when the connection opens within ``timeout_s`` and, with an
    expectation, the answer to ``send`` fits it in that time. Values: ``connect_s``, and with an
    exchange ``answer_s`` (connection to fitting answer)."""

    timed = True

    def __init__(self, unit: str, name: str, interval_s: float, clock: Clock, *, host: str, port: int,
                 timeout_s: float, send: bytes | None = None, expect: bytes | None = None,
                 expect_regex: str | None = None, max_read: int = 4096) -> None:
        super().__init__(unit, name, interval_s, clock)
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.send = send
        self.expect = expect
        self.expect_regex = re.compile(expect_regex.encode()) if expect_regex is not None else None
        self.max_read = max_read

    async def observe(self) -> Observation:
        t0 = self.clock.monotonic()
        writer: asyncio.StreamWriter | None = None
        answer = b""
        values: dict[str, float] = {}
        try:
            async with asyncio.timeout(self.timeout_s):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                values["connect_s"] = self.clock.monotonic() - t0
                if self.send:
                    writer.write(self.send)
                    await writer.drain()
                if self.expect is not None or self.expect_regex is not None:
                    answer = await self._answer(reader)
                    values["answer_s"] = self.clock.monotonic() - t0
        except TimeoutError:
            what = "connection" if "connect_s" not in values else f"answer {self._expectation()}"
            return self._obs(False, values, f"no {what} within {self.timeout_s:g}s{_got(answer)}", t0)
        except OSError as exc:
            return self._obs(False, values, exc.strerror or str(exc) or type(exc).__name__, t0)
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        problem = self._judge(answer)
        if problem is not None:
            values.pop("answer_s", None)
            return self._obs(False, values, problem, t0)
        return self._obs(True, values, None, t0)

    async def _answer(self, reader: asyncio.StreamReader) -> bytes:
        """Read until the answer fits (or cannot fit any more), the peer closes, or max_read bytes."""
        buf = b""
        while len(buf) < self.max_read:
            chunk = await reader.read(self.max_read - len(buf))
            if not chunk:
                break
            buf += chunk
            if self.expect is not None and len(buf) >= len(self.expect):
                break
            if self.expect_regex is not None and self.expect_regex.search(buf):
                break
        return buf

    def _expectation(self) -> str:
        if self.expect is not None:
            return f"starting with {self.expect!r}"
        assert self.expect_regex is not None
        return f"matching {self.expect_regex.pattern!r}"

    def _judge(self, answer: bytes) -> str | None:
        if self.expect is not None and not answer.startswith(self.expect):
            return f"answer does not start with {self.expect!r}{_got(answer) or ': none (closed)'}"
        if self.expect_regex is not None and not self.expect_regex.search(answer):
            return f"answer does not match {self.expect_regex.pattern!r}{_got(answer) or ': none (closed)'}"
        return None


def _got(answer: bytes) -> str:
    return f": got {answer[:80]!r}" if answer else ""


def _make(site: ProbeSite, cfg: TcpProbeConfig) -> TcpProbe:
    return TcpProbe(site.unit, site.name, cfg.interval_s, site.clock, host=cfg.host, port=cfg.port,
                    timeout_s=cfg.timeout_s, send=cfg.send.encode() if cfg.send else None,
                    expect=cfg.expect.encode() if cfg.expect is not None else None,
                    expect_regex=cfg.expect_regex, max_read=cfg.max_read_bytes)


register(TcpProbeConfig, _make)

"""The HTTP probe against a peer that answers anything at all: never an exception, always an Observation."""

from __future__ import annotations

import asyncio
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enmei.clock import SystemClock
from enmei.monitor.http import HttpProbe

pytestmark = pytest.mark.integration
N = int(os.environ.get("ENMEI_FUZZ_EXAMPLES", "200"))

replies = st.one_of(
    st.binary(max_size=600),
    st.builds(lambda status, hdrs, body: b"HTTP/1.1 " + status + b"\r\n" + hdrs + b"\r\n\r\n" + body,
              st.one_of(st.sampled_from([b"200 OK", b"500 x", b"99999", b"", b"abc"]), st.binary(max_size=12)),
              st.binary(max_size=200), st.binary(max_size=300)),
)


@settings(max_examples=N, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(replies, st.booleans())
def test_http_probe_survives_any_reply(reply: bytes, close_early: bool) -> None:
    async def go() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(reply if not close_early else reply[: len(reply) // 2])
                await writer.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            probe = HttpProbe("u", "http", 1.0, SystemClock(), url=f"http://127.0.0.1:{port}/x", timeout_s=0.5,
                              expect_status=[200])
            obs = await probe.observe()
            assert obs.unit == "u"
            assert obs.ok == (obs.values.get("status") == 200.0)
            if not obs.ok:
                assert obs.error
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(go())

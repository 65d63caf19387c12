"""Hostile clients against a real server on 127.0.0.1 (issue 11 D1 and D11): huge bodies without a
token, bodies over the limit, and idle connections held open. Each attack is bounded in bytes, sockets
and time; the attackers run in threads, since the server shares this test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from enmei.demo.ports import free_ports
from enmei.web.limits import WebLimits

from .test_serve import served, until, web_config

pytestmark = pytest.mark.integration

MIB = 1 << 20


def _answer(sock: socket.socket, wait_s: float = 10.0) -> bytes:
    """What the server sent until it closed (or ``wait_s`` passed); a reset keeps what came before it."""
    got = b""
    sock.settimeout(wait_s)
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            got += chunk
    return got


def upload(port: int, head: bytes, *, cap: int, chunked: bool = False, wait_s: float = 15.0,
           source: str = "127.0.0.1") -> tuple[bytes, int]:
    """Send ``head``, then body bytes until the server answers or ``cap`` bytes are sent; then wait up to
    ``wait_s`` for the answer. Returns (the answer, body bytes sent)."""
    piece = b"[" + b"1," * 32_766 + b"1"  # 64 KiB of a JSON array that never ends
    frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s, source_address=(source, 0)) as sock:
        sock.sendall(head)
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            r, w, _ = select.select([sock], [sock] if sent < cap else [], [], max(0.0, end - time.monotonic()))
            if r:
                break
            if not w:
                continue
            try:
                sent += sock.send(frame)
            except OSError:  # the server closed: its answer may be waiting
                break
        return _answer(sock), sent


def post_head(path: str, *, length: int | None, token: str | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_huge_bodies_are_refused_before_they_are_read_and_supervision_goes_on(tmp_path: Path) -> None:
    """D1: 100 MiB declared without a token -> 401, with the token -> 413, chunked past 64 KiB -> 413,
    each answered while the client is still uploading; a kill -9 during the attack is restarted at once."""
    (port,) = free_ports(1)
    async with served(tmp_path, web_config(port)) as s:
        wport = int(s.url.rsplit(":", 1)[1])
        action = "/api/units/web/actions/restart"
        declared = 100 * MIB
        cap = 16 * MIB  # what the client pushes at most while waiting: the server must answer before

        no_token = await asyncio.to_thread(upload, wport, post_head(action, length=declared), cap=cap)
        assert no_token[0].startswith(b"HTTP/1.1 401 "), no_token[0][:200]
        assert no_token[1] < declared
        big = await asyncio.to_thread(upload, wport, post_head(action, length=declared, token=s.token), cap=cap)
        assert big[0].startswith(b"HTTP/1.1 413 "), big[0][:200]
        assert b"65536 bytes" in big[0]
        streamed = await asyncio.to_thread(upload, wport, post_head(action, length=None, token=s.token), cap=cap,
                                           chunked=True)
        assert streamed[0].startswith(b"HTTP/1.1 413 "), streamed[0][:200]
        assert streamed[1] < cap
        wrong = await asyncio.to_thread(upload, wport, post_head(action, length=declared, token="x" * 20), cap=cap)
        assert wrong[0].startswith(b"HTTP/1.1 403 "), wrong[0][:200]
        rebound = post_head(action, length=declared, token=s.token).replace(b"Host: 127.0.0.1", b"Host: evil.example")
        elsewhere = await asyncio.to_thread(upload, wport, rebound, cap=cap)
        assert elsewhere[0].startswith(b"HTTP/1.1 421 ") and b"connection: close" in elsewhere[0].lower()
        assert not [b for _, _, k, _, b in s.records if k == "decision" and b.get("policy") == "operator:web"]

        # Four attackers at once, three uploads each, while the unit is killed.
        async def attacker() -> list[bytes]:
            out = []
            for _ in range(3):
                answer, _ = await asyncio.to_thread(upload, wport, post_head(action, length=declared), cap=cap)
                out.append(answer[:12])
            return out
        attackers = [asyncio.create_task(attacker()) for _ in range(4)]
        await asyncio.sleep(0.2)
        old = s.pid()
        t0 = time.monotonic()
        os.kill(old, signal.SIGKILL)
        assert await until(lambda: s.first("unit.event", t0, event="started") is not None, 10)
        started = s.first("unit.event", t0, event="started")
        # The goal is 1 s (about 0.3 s here when idle); 2.5 s leaves room for a loaded machine and still
        # fails on the stall of issue 11 (5.09 s with one 100 MiB body parsed on the loop).
        assert started is not None and started - t0 < 2.5, started - t0 if started else None
        answers = [a for t in attackers for a in await t]
        assert answers == [b"HTTP/1.1 401"] * 12

        # A normal action with a small body still works.
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as c:
            r = await c.post(action, headers={"Authorization": f"Bearer {s.token}"}, json={"args": {"delay_s": 0}})
            assert r.status_code == 202, r.text


def _closed_by_server(sock: socket.socket, wait_s: float) -> bool:
    """Whether the server closes ``sock`` (EOF or reset) within ``wait_s``."""
    sock.settimeout(wait_s)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


async def test_idle_connections_never_lock_out_the_operator(tmp_path: Path) -> None:
    """D11: 64 idle connections from one address, then 160 from ten: reads and an authenticated action
    still get through at once; idle connections are closed (per-client cap, connection cap, header
    timeout) and a client trickling its headers is closed too."""
    (port,) = free_ports(1)
    limits = WebLimits(header_timeout_s=3.0)
    async with served(tmp_path, web_config(port), limits=limits) as s:
        wport = int(s.url.rsplit(":", 1)[1])
        held: list[socket.socket] = []
        try:
            def connect(n: int, sources: int = 1) -> None:  # in a thread: the server accepts meanwhile
                for i in range(n):
                    held.append(socket.create_connection(("127.0.0.1", wport), timeout=30,
                                                         source_address=(f"127.0.0.{1 + i % sources}", 0)))
            await asyncio.to_thread(connect, 64)
            auth = {"Authorization": f"Bearer {s.token}"}
            # A new connection per request, as an operator's command makes: a kept-alive one is idle between
            # requests, and closing idle connections is the point (a browser retries on a closed one).
            no_reuse = httpx.Limits(max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=s.url, timeout=30, limits=no_reuse) as c:
                r = await c.post("/api/units/web/actions/restart", headers=auth)
                assert r.status_code == 202, r.text
                assert (await c.get("/api/units")).status_code == 200
                # The per-client cap closed all but the newest 16 of them.
                closed = await asyncio.gather(*(asyncio.to_thread(_closed_by_server, h, 0.5) for h in held[:40]))
                assert all(closed), f"{closed.count(False)} of the 40 oldest idle connections are still open"

                # 160 more from ten loopback addresses, 16 each: the connection cap (128) closes the longest idle.
                await asyncio.to_thread(connect, 160, 10)
                trickler = socket.create_connection(("127.0.0.1", wport), timeout=10)
                held.append(trickler)
                trickler.sendall(b"GET /api/units HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                r = await c.post("/api/units/web/actions/restart", headers=auth)
                assert r.status_code == 202, r.text
                assert (await c.get("/api/units")).status_code == 200

                def trickle() -> bool:
                    end = time.monotonic() + 30
                    while time.monotonic() < end:  # one header line a second: never complete
                        try:
                            trickler.sendall(b"X-Slow: 1\r\n")
                        except OSError:
                            return True
                        if _closed_by_server(trickler, 1.0):
                            return True
                    return False
                assert await asyncio.to_thread(trickle), "a client trickling its headers was never closed"
                # After the header timeout every idle connection is closed.
                closed = await asyncio.gather(*(asyncio.to_thread(_closed_by_server, h, 30.0) for h in held))
                assert all(closed), f"{closed.count(False)} idle connections still open after the header timeout"
            decisions = [b for _, _, k, _, b in s.records if k == "decision" and b.get("policy") == "operator:web"]
            assert len(decisions) == 2
        finally:
            for h in held:
                h.close()

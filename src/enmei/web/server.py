"""``serve``: the web app next to supervision, in the same event loop, on loopback only.

::

    await supervise(loaded, companion=lambda engine: serve(engine, "127.0.0.1:8470",
                                                           loaded.state_dir / "web.token"))

``serve`` checks the address (loopback only), reads or makes the token, binds the socket itself (so a
port in use is a clear ``WebError``, not uvicorn's ``sys.exit``), then runs uvicorn's server inside the
running loop until it is cancelled; it then ends the event streams, lets requests finish for up to
``grace_s`` seconds and closes the socket. uvicorn's own signal handling is switched off: SIGINT and
SIGTERM stay with the supervisor, whose stop cancels this companion.

What a client may cost is bounded by ``enmei.web.limits`` (``limits=``): the token is checked and the
body size limited (64 KiB, 413) before any body is read; idle connections time out, are capped per
client address and in all, and never take the slots of requests in progress.

Failure: ``WebError`` before anything is served (bad or non-loopback address, port in use, token file
unusable); the failure is also journaled as an alert, since a companion's exception only surfaces when
supervision ends. Supervision itself never waits on the web server.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import uvicorn

from enmei.clock import wait_for
from enmei.engine.loop import Engine
from enmei.model import Severity
from enmei.web.app import create_app
from enmei.web.auth import WebError, load_or_create_token
from enmei.web.context import WebContext
from enmei.web.limits import GateTally, WebLimits, guarded_protocol

__all__ = ["DEFAULT_LISTEN", "bind_listen", "parse_listen", "serve"]

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:8470"


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``127.0.0.1:8470``, ``[::1]:8470``, ``localhost:8470``, ``:8470``) -> (ip, port).

    Raises ``WebError`` for anything that is not a loopback address with a port from 0 to 65535 (0: any
    free port).

    >>> parse_listen("localhost:8470")
    ('127.0.0.1', 8470)
    >>> parse_listen("[::1]:9000")
    ('::1', 9000)
    """
    text = listen.strip()
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise WebError(f"--listen {listen!r}: give HOST:PORT, e.g. {DEFAULT_LISTEN}")
    host = host.strip("[]") or "127.0.0.1"
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise WebError(f"--listen {listen!r}: {host!r} is not an IP address; enmei's web server listens on "
                       "loopback only (127.0.0.1, ::1 or localhost)") from None
    if not ip.is_loopback:
        raise WebError(f"--listen {listen!r}: {host} is not a loopback address. enmei's web server listens on "
                       "loopback only (127.0.0.0/8, ::1, localhost); for remote access put an authenticating "
                       "TLS proxy in front of it")
    return str(ip), int(port)


def bind_listen(listen: str) -> socket.socket:
    """A listening socket on ``listen`` (see ``parse_listen``), for a caller that wants a port in use to
    stop it before supervision starts (``enmei up``): pass it to ``serve(..., sock=)``. Raises ``WebError``.
    """
    return _bind(*parse_listen(listen))


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise WebError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers (the supervisor owns SIGINT and SIGTERM)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def serve(engine: Engine, listen: str, token_path: Path, *, say: Callable[[str], None] | None = None,
                grace_s: float = 2.0, sock: socket.socket | None = None, limits: WebLimits | None = None) -> None:
    """Serve the dashboard, API and ``/metrics`` for ``engine`` on ``listen`` until cancelled.

    ``say`` gets the lines meant for the operator (default: stderr): where the server listens, and the
    token — printed once, when it is made; later starts name only the file. ``sock``: a socket from
    ``bind_listen(listen)`` to serve on (it is closed at the end); without it ``serve`` binds its own.
    ``limits``: what a client may cost (``enmei.web.limits``; the defaults without it).
    See the module docstring for failures.
    """
    say = say or _say
    try:
        host, port = parse_listen(listen)
        token, created = load_or_create_token(token_path)
        if sock is None:
            sock = _bind(host, port)
    except WebError as exc:
        if sock is not None:
            sock.close()
        with contextlib.suppress(Exception):
            engine.alert(None, f"web server not started: {exc}", Severity.CRITICAL, {"listen": listen})
        raise
    host, bound_port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{bound_port}/"
    limits = limits or WebLimits()
    tally = GateTally()
    app = create_app(engine, token=token, token_path=token_path, limits=limits, tally=tally)
    ctx: WebContext = app.state.ctx
    # No limit_concurrency: uvicorn's counts idle connections too, so 64 of them locked everyone out
    # (issue 11 D11). The guarded protocol and the request gate bound connections and requests instead.
    config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, lifespan="off",
                            ws="none", server_header=False, timeout_graceful_shutdown=max(1, round(grace_s)),
                            timeout_keep_alive=5, limit_concurrency=None, backlog=128,
                            http=guarded_protocol(limits, tally), h11_max_incomplete_event_size=16 * 1024)
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="enmei-web")
    ctx.start()
    if created:
        say(f"enmei web: {url} — new API token (printed this once; kept in {token_path}, mode 0600): {token}")
        say(f"enmei web: open {url}#token={token} to unlock actions in this browser")
    else:
        say(f"enmei web: {url} — API token in {token_path}")
    try:
        await asyncio.shield(task)
    finally:
        ctx.close()  # ends event streams first, so the graceful shutdown has nothing long to wait for
        server.should_exit = True
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await wait_for(task, grace_s + 3.0)
        if not task.done():
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
        sock.close()
        log.info("web server on %s stopped", url)

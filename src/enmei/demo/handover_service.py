"""A small HTTP server that takes its listening socket by ``LISTEN_FDS`` and drains on SIGTERM: the service
of ``enmei bench deploy`` and the handover tests (``python -m enmei.demo.handover_service --version 2``).

* ``LISTEN_FDS`` (with ``LISTEN_PID`` equal to its pid) gives the socket at fd 3; without it, ``--port``
  is bound (a plain start, for comparison). The socket is set non-blocking: two instances share its
  queue during a handover, and the one that loses a race for a connection must not block in accept.
* ``READY=1`` goes to ``NOTIFY_SOCKET`` (if set) once it accepts.
* ``GET /`` answers ``{"version", "pid"}``; ``GET /slow?ms=N`` after N ms (a request in flight for drains).
* On SIGTERM it stops accepting, finishes the requests it has, and exits 0.
* ``--fail-start`` exits 3 at once (a broken new version); ``--ready-delay-s`` waits before accepting.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["main", "socket_from_env"]


def socket_from_env(environ: dict[str, str] | None = None) -> socket.socket | None:
    """The first ``LISTEN_FDS`` socket (fd 3) if the variables are meant for this process, else None."""
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid()) or int(env.get("LISTEN_FDS", "0") or 0) < 1:
        return None
    return socket.socket(fileno=3)


class _Handler(BaseHTTPRequestHandler):
    server_version = "enmei-handover-demo"
    protocol_version = "HTTP/1.0"
    version = "1"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/slow":
            ms = float(parse_qs(url.query).get("ms", ["100"])[0])
            time.sleep(min(ms, 30_000) / 1000)
        body = json.dumps({"version": self.version, "pid": os.getpid()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for the requests in flight: the drain
    block_on_close = True


def _notify(message: str) -> None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    target: str | bytes = b"\0" + addr[1:].encode() if addr.startswith("@") else addr
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), target)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="enmei.demo.handover_service")
    ap.add_argument("--version", default="1")
    ap.add_argument("--port", type=int, default=0, help="bound when no LISTEN_FDS socket is given")
    ap.add_argument("--ready-delay-s", type=float, default=0.0)
    ap.add_argument("--fail-start", action="store_true")
    args = ap.parse_args(argv)
    if args.fail_start:
        print("broken version: exiting", file=sys.stderr, flush=True)
        return 3
    sock = socket_from_env()
    _Handler.version = args.version
    server = _Server(("127.0.0.1", args.port), _Handler, bind_and_activate=sock is None)
    if sock is not None:
        server.socket.close()
        server.socket = sock
    server.socket.setblocking(False)
    # The stop signals are blocked before any thread starts and taken by sigwait in the main thread: no
    # handler runs at an arbitrary point of the main thread (an Event.set() from a handler can deadlock).
    stops = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    if args.ready_delay_s > 0:
        time.sleep(args.ready_delay_s)
    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    loop.start()
    _notify("READY=1")
    print(f"version {args.version} serving (pid {os.getpid()}, inherited socket: {sock is not None})",
          file=sys.stderr, flush=True)
    signal.sigwait(stops)
    server.shutdown()  # stops accepting; the queue stays with whoever else holds the socket
    server.server_close()  # waits for the requests in flight
    print(f"version {args.version} drained", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A small real HTTP service with fault knobs, for the demo and the tests.

Run it: ``python -m enmei.demo.service --port 8471``. It binds 127.0.0.1 only.

Service endpoints (GET): ``/`` (name, version, pid, uptime), ``/health``, ``/api/items``, ``/api/search``
(each API endpoint does a little work; its latency can be raised on its own, for component narrowing).

Admin endpoints (POST; also GET, so that ``curl`` is enough):

* ``/admin/fault?leak_mib_s=R&latency_ms=L&endpoint=/api/search&error_rate=P`` — leak memory at R MiB/s,
  add L ms to every request (or to one endpoint), answer 500 to a fraction P of requests.
* ``/admin/crash?how=exit|abort|segv`` — die now.
* ``/admin/hang?ignore_term=1`` — stop answering anything (and, with ignore_term, ignore SIGTERM).
* ``/admin/degrade?on=1`` — degraded mode: ``/api/search`` answers 503, the rest works.
* ``/admin/reset`` — clear every fault; ``/admin/state`` — the knobs and the leaked bytes.

Its log (stderr) is an access log plus what a real service says under these faults: a slow request
(an injected latency of 100 ms or more), the error behind an injected 500, the degraded search, and
five times a second while it leaks, the heap's size — the lines the fault-class data set
(``enmei.bench.logfaults``) is made of.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

__all__ = ["Faults", "main", "serve"]

VERSION = "demo-1.0"
_SLOW_MS = 100.0  # a request held this long by an injected latency says so in the log


class Faults:
    """The fault knobs, shared by the request threads and the leak thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.leak_mib_s = 0.0
        self.latency_ms = 0.0
        self.latency_endpoint: str | None = None
        self.error_rate = 0.0
        self.degraded = False  # degraded mode: the expensive endpoint (/api/search) is switched off
        self.hung = threading.Event()
        self.ignore_term = threading.Event()
        self.leaked: list[bytearray] = []
        self.leaked_bytes = 0

    def state(self) -> dict[str, Any]:
        with self.lock:
            return {"leak_mib_s": self.leak_mib_s, "latency_ms": self.latency_ms,
                    "latency_endpoint": self.latency_endpoint, "error_rate": self.error_rate,
                    "hung": self.hung.is_set(), "leaked_bytes": self.leaked_bytes, "degraded": self.degraded}

    def reset(self) -> None:
        with self.lock:
            self.leak_mib_s = self.latency_ms = self.error_rate = 0.0
            self.latency_endpoint = None
            self.leaked.clear()
            self.leaked_bytes = 0

    def leak_loop(self) -> None:
        """Allocate and touch memory at ``leak_mib_s``, in 10 steps a second."""
        while True:
            time.sleep(0.1)
            with self.lock:
                rate = self.leak_mib_s
            if rate > 0:
                chunk = bytearray(int(rate * 2**20 / 10))
                for i in range(0, len(chunk), 4096):  # touch every page so it counts in RSS
                    chunk[i] = 1
                with self.lock:
                    self.leaked.append(chunk)
                    self.leaked_bytes += len(chunk)
                    total = self.leaked_bytes
                if len(self.leaked) % 2 == 0:  # five times a second, as a runtime under memory pressure does
                    sys.stderr.write(f"{time.strftime('%H:%M:%S')} memory: heap grew to {total >> 20} MiB "
                                     f"({rate:g} MiB/s), gc pause {int(20 + (total >> 20) // 4)} ms\n")


def _handler(faults: Faults, started: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = f"enmei-demo/{VERSION}"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(f"{time.strftime('%H:%M:%S')} {format % args}\n")

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = (json.dumps(body) + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._route()

        def do_POST(self) -> None:
            self._route()

        def _route(self) -> None:
            url = urlparse(self.path)
            q = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if url.path.startswith("/admin/"):
                self._admin(url.path, q)
                return
            if faults.hung.is_set():
                while True:  # never answers while hung (the connection stays open)
                    time.sleep(3600)
            with faults.lock:
                latency = faults.latency_ms
                endpoint = faults.latency_endpoint
                error_rate = faults.error_rate
            if latency and (endpoint is None or endpoint == url.path):
                time.sleep(latency / 1000)
                if latency >= _SLOW_MS:
                    self.log_message("slow request %s took %d ms (waiting on the backend)", url.path, int(latency))
            if error_rate and random.random() < error_rate:
                self.log_message("ERROR handling %s: injected failure (error rate %.2f)", url.path, error_rate)
                self._send(500, {"error": "injected"})
                return
            if url.path == "/":
                self._send(200, {"service": "enmei-demo", "version": VERSION, "pid": os.getpid(),
                                 "uptime_s": round(time.monotonic() - started, 3)})
            elif url.path == "/health":
                self._send(200, {"ok": True})
            elif url.path == "/api/items":
                self._send(200, {"items": [{"id": i, "name": f"item-{i}"} for i in range(20)]})
            elif url.path == "/api/search" and faults.degraded:
                self.log_message("search is switched off (degraded mode): answering 503")
                self._send(503, {"error": "degraded: search is off"})
            elif url.path == "/api/search":
                term = q.get("q", "item")
                hits = [i for i in range(200) if term in f"item-{i}"][:20]
                self._send(200, {"q": term, "hits": hits})
            else:
                self._send(404, {"error": "not found"})

        def _admin(self, path: str, q: dict[str, str]) -> None:
            try:
                if path == "/admin/fault":
                    with faults.lock:
                        if "leak_mib_s" in q:
                            faults.leak_mib_s = max(0.0, float(q["leak_mib_s"]))
                        if "latency_ms" in q:
                            faults.latency_ms = max(0.0, float(q["latency_ms"]))
                            faults.latency_endpoint = q.get("endpoint") or None
                        if "error_rate" in q:
                            faults.error_rate = min(1.0, max(0.0, float(q["error_rate"])))
                    self._send(200, faults.state())
                elif path == "/admin/crash":
                    how = q.get("how", "exit")
                    self._send(200, {"crashing": how})
                    self.wfile.flush()
                    _crash(how)
                elif path == "/admin/hang":
                    if q.get("ignore_term") in ("1", "true", "yes"):
                        faults.ignore_term.set()  # the SIGTERM handler (main thread) checks it
                    faults.hung.set()
                    self._send(200, {"hung": True})
                elif path == "/admin/degrade":
                    with faults.lock:
                        faults.degraded = q.get("on", "1") in ("1", "true", "yes")
                    self._send(200, faults.state())
                elif path == "/admin/reset":
                    faults.reset()
                    self._send(200, faults.state())
                elif path == "/admin/state":
                    self._send(200, faults.state())
                else:
                    self._send(404, {"error": "no such admin endpoint"})
            except ValueError as exc:
                self._send(400, {"error": str(exc)})

    return Handler


def _crash(how: str) -> None:
    sys.stderr.write(f"demo service: crashing on request ({how})\n")
    sys.stderr.flush()
    if how == "abort":
        os.abort()
    if how == "segv":
        ctypes.string_at(0)
    os._exit(3)


def serve(port: int, faults: Faults | None = None) -> None:
    faults = faults or Faults()
    started = time.monotonic()
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(faults, started))
    server.daemon_threads = True
    threading.Thread(target=faults.leak_loop, daemon=True, name="leak").start()

    def _term(signum: int, frame: object) -> None:
        if faults.ignore_term.is_set():
            sys.stderr.write("demo service: SIGTERM ignored (hung on purpose)\n")
            return
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _term)
    sys.stderr.write(f"demo service {VERSION} listening on 127.0.0.1:{port} (pid {os.getpid()})\n")
    sys.stderr.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        sys.stderr.write("demo service: stopped\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m enmei.demo.service", description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=8471)
    ap.add_argument("--leak-mib-s", type=float, default=0.0)
    ap.add_argument("--crash-after-s", type=float, default=None, help="exit with code 3 after this long")
    args = ap.parse_args(argv)
    faults = Faults()
    faults.leak_mib_s = args.leak_mib_s
    if args.crash_after_s is not None:
        threading.Timer(args.crash_after_s, _crash, args=("exit",)).start()
    try:
        serve(args.port, faults)
    except OSError as exc:
        sys.stderr.write(f"demo service: cannot listen on 127.0.0.1:{args.port}: {exc.strerror}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

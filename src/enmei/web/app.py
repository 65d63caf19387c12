"""The FastAPI application: API, pages, static files and the guards around them.

Guards, for every request:

* **Host check.** Only loopback names are served (``localhost``, 127.0.0.0/8, ``::1``; any port): a page
  elsewhere that points a name of its own at 127.0.0.1 (DNS rebinding) gets 421, not the API.
* **Headers.** A content security policy allowing only this origin's scripts, no framing, no sniffing, no
  referrer.
* **Errors.** Bad parameters are 422 with a sentence naming each one and why (``detail``), plus
  FastAPI's structured ``errors``; an exception in a handler is a 500 with its type and message, logged
  — it never reaches the engine.

The OpenAPI description is at ``/openapi.json`` (interactive docs would load scripts from a CDN, so
there are none; the page ``/api`` lists the endpoints from that description).
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from enmei import __version__
from enmei.engine.loop import Engine
from enmei.report.charts import plotly_js_path
from enmei.web import api, pages
from enmei.web.context import WebContext
from enmei.web.deps import SafeJSON
from enmei.web.limits import ASGIApp, GateTally, Message, Receive, RequestGate, Scope, Send, WebLimits

__all__ = ["create_app"]

log = logging.getLogger(__name__)


_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                                 b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
                                 b"base-uri 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]

_DESCRIPTION = """The operator's view of an enmei supervisor: units, incidents, the journal, the policy.

Reading needs no token. Every request that changes something needs `Authorization: Bearer <token>`,
the token enmei wrote (mode 0600) to its state dir on first start: 401 without it, 403 with a wrong one.
Live updates: `GET /api/events` (server-sent events). Prometheus: `GET /metrics`.
"""


def loopback_host(host: str) -> bool:
    """Whether a ``Host`` header names this machine's loopback (any port).

    >>> [loopback_host(h) for h in ("127.0.0.1:8470", "localhost", "[::1]:80", "evil.example:8470")]
    [True, True, True, False]
    """
    host = host.strip().lower()
    if host.startswith("["):
        name = host[1:host.find("]")] if "]" in host else ""
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Guard:
    """Pure ASGI middleware (streams pass through untouched): host check and security headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), "")
        if not loopback_host(host):
            body = (f"enmei serves loopback names only (localhost, 127.0.0.1, [::1]); this request named "
                    f"{host[:100]!r}\n").encode()
            # Connection: close, so that a body sent with it is never read (see enmei.web.limits).
            await send({"type": "http.response.start", "status": 421,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                    (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _where(loc: tuple[Any, ...]) -> str:
    if not loc:
        return "request"
    part = {"query": "query parameter", "path": "path parameter", "body": "body", "header": "header"}.get(
        str(loc[0]), str(loc[0]))
    name = ".".join(str(x) for x in loc[1:])
    return f"{part} {name!r}" if name else part


async def _invalid(request: Request, exc: Exception) -> SafeJSON:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors():
        msg = f"{_where(tuple(err.get('loc', ())))}: {err.get('msg', 'invalid')}"
        given = err.get("input")
        if given is not None and not isinstance(given, (dict, list)):
            msg += f" (got {str(given)[:60]!r})"
        parts.append(msg)
    return SafeJSON({"detail": "; ".join(parts) or "invalid request",
                     "errors": jsonable_encoder(exc.errors(), custom_encoder={Exception: str})}, status_code=422)


async def _crash(request: Request, exc: Exception) -> SafeJSON:
    log.error("web handler for %s %s failed", request.method, request.url.path, exc_info=exc)
    return SafeJSON({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)


def create_app(engine: Engine, *, token: str, token_path: Path, limits: WebLimits | None = None,
               tally: GateTally | None = None) -> FastAPI:
    """The web app for ``engine``, wrapped in its guards. ``app.state.ctx`` is its :class:`WebContext`:
    call ``ctx.start()`` inside the running loop for background work, ``ctx.close()`` when done.
    ``limits``: the request gate's figures (``enmei.web.limits``); what it refuses is counted in ``tally``
    (also ``app.state.gate_tally``)."""
    ctx = WebContext(engine, token=token, token_path=token_path)
    app = FastAPI(title="enmei", version=__version__, description=_DESCRIPTION, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json", default_response_class=SafeJSON)
    app.state.ctx = ctx
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(Exception, _crash)
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(packages=[("enmei.web", "static")]), name="static")

    @app.get("/vendor/plotly.min.js", include_in_schema=False)
    async def plotly_js() -> FileResponse:
        return FileResponse(plotly_js_path(), media_type="text/javascript",
                            headers={"Cache-Control": "public, max-age=86400"})

    tally = tally if tally is not None else GateTally()
    app.state.gate_tally = tally
    # Inside the host check, outside everything that reads a body: the token and the size come first.
    app.add_middleware(RequestGate, token=token, token_path=str(token_path), limits=limits, tally=tally)
    app.add_middleware(Guard)
    return app

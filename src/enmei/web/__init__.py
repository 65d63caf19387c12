"""The operator's view: web dashboard, HTTP API, server-sent events and Prometheus ``/metrics``.

``serve(engine, listen, token_path)`` runs it next to supervision (as ``supervise``'s companion);
``create_app`` builds the ASGI app alone (tests, embedding). See :mod:`enmei.web.server` for the
promises about addresses and failures, :mod:`enmei.web.context` for why the web layer never delays
supervision, :mod:`enmei.web.api` for the endpoints.
"""

from enmei.web.app import create_app
from enmei.web.auth import WebError, load_or_create_token
from enmei.web.server import DEFAULT_LISTEN, bind_listen, parse_listen, serve

__all__ = ["DEFAULT_LISTEN", "WebError", "bind_listen", "create_app", "load_or_create_token", "parse_listen", "serve"]

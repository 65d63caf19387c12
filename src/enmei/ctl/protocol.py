"""The ctl wire format: one JSON object per line each way, bounded.

A request is ``{"op": OP, ...}`` on one line (UTF-8, at most ``MAX_REQUEST`` bytes with its newline);
the answer is one line ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. Ops:

* ``status`` (optional ``unit``): ``{"units": [...]}``, each unit's state, health, pid, restart budget,
  backoff, breaker and last reset;
* ``start`` / ``stop`` / ``restart`` / ``reset`` with ``unit``: what the engine did (``seq`` of its record,
  the repair it ``preempted``, why it was ``rejected`` or ``suppressed``);
* ``reload``: the engine's reload answer, or an error if this build has none;
* ``logs`` with ``unit``, ``lines`` (1..``MAX_LINES``) and ``stream`` (``stderr``, ``stdout``, ``console``);
* ``update`` with ``unit`` and any of ``image``, ``kernel``, ``initrd`` (strings), ``clone_timeout_s``,
  ``verify_s`` (numbers): the ``shadow_update`` remedy of a VM unit, answered when it ends (at most
  ``UPDATE_WAIT_S``), with its outcome and steps.

* ``upgrade`` with optional ``enmei`` (a list: the executable and its first arguments, default this
  enmei's ``python -m enmei``), ``check_timeout_s``, ``takeover_timeout_s``: start a successor
  (``enmei.engine.upgrade``) and answer once its self-check is done: ``{"upgrade": {"state":
  "handing_over", "successor_pid"}}`` (this enmei then lets go; poll ``status`` for the successor's pid)
  or ``{"upgrade": {"state": "fell_back", "reason"}}``. ``status`` answers carry the last upgrade's end.

A connection may carry several requests, one after the other; the server closes it after
``CLIENT_TIMEOUT_S`` without a complete request, or when an answer cannot be written within that time.
"""

from __future__ import annotations

import json
from typing import Any

from enmei.errors import EnmeiError

__all__ = ["CLIENT_TIMEOUT_S", "MAX_CLIENTS", "MAX_LINES", "MAX_REQUEST", "OPS", "SOCKET_NAME", "STREAMS",
           "UNIT_OPS", "UPDATE_ARGS", "UPDATE_REMEDIES", "UPDATE_WAIT_S", "UPGRADE_WAIT_S", "CtlError", "decode",
           "encode"]

SOCKET_NAME = "ctl.sock"
MAX_REQUEST = 64 * 1024
MAX_LINES = 10_000
MAX_CLIENTS = 16
CLIENT_TIMEOUT_S = 10.0
UNIT_OPS = ("start", "stop", "restart", "reset")
OPS = ("status", "logs", "reload", "update", "upgrade", *UNIT_OPS)
UPDATE_ARGS = ("image", "kernel", "initrd", "clone_timeout_s", "verify_s", "command")
UPGRADE_WAIT_S = 600.0  # a successor starts and checks itself (bounded by its own check_timeout_s)
UPDATE_WAIT_S = 600.0  # a clone boots, under TCG, in seconds to a minute
#: the remedies ``update`` may run: the first one the unit's backend can have (``Remedy.refusal``)
UPDATE_REMEDIES = ("handover", "shadow_update")
STREAMS = ("stderr", "stdout", "console")


class CtlError(EnmeiError):
    """A ctl request that cannot be served, or no supervisor to serve it (``not_running``: nobody answers on
    the socket); ``str`` is for a person."""

    def __init__(self, message: str, *, not_running: bool = False) -> None:
        super().__init__(message)
        self.not_running = not_running


def encode(obj: Any) -> bytes:
    """One message as its line."""
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """One line as a message; ``CtlError`` if it is not a JSON object."""
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CtlError(f"not a JSON line: {exc}") from None
    if not isinstance(obj, dict):
        raise CtlError(f"a message is a JSON object, not {type(obj).__name__}")
    return obj

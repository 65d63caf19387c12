"""sd_notify from enmei itself, for running it as a systemd ``Type=notify`` service (no dependency: one
``AF_UNIX`` datagram socket).

When ``NOTIFY_SOCKET`` is set (a path, or ``@name`` for an abstract socket), ``ServiceNotifier.from_env``
reads it — and ``WATCHDOG_USEC``/``WATCHDOG_PID`` — and removes them from enmei's environment, so that no
unit inherits them and speaks for enmei. It then sends:

* ``READY=1`` once every autostart unit had its first start attempt (``Engine.first_starts``), with a
  ``STATUS=`` line (how many units run);
* ``WATCHDOG=1`` every ``WATCHDOG_USEC / 2``, but only while the engine's loop makes progress (its queue
  is drained, or it handled something since the last ping): a stalled loop stops pinging, and systemd's
  ``WatchdogSec=`` restarts enmei;
* ``RELOADING=1`` (with ``MONOTONIC_USEC=``) when a reload begins applying, ``READY=1`` when it is done;
* ``STOPPING=1`` as soon as a stop is asked for.

A send that fails (no listener, a full buffer) is logged once and never raised: the service manager
going away must not stop supervision.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping

__all__ = ["ServiceNotifier", "notify_address", "watchdog_interval_s"]

log = logging.getLogger(__name__)


def notify_address(value: str) -> str | bytes:
    """The ``sendto`` address of ``NOTIFY_SOCKET``: a path, or (``@name``) an abstract socket."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_interval_s(environ: MutableMapping[str, str], pid: int) -> float | None:
    """Half of ``WATCHDOG_USEC`` in seconds, if the watchdog is for ``pid`` (``WATCHDOG_PID`` unset or
    equal to it); None when there is no watchdog, or a malformed value (logged)."""
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    owner = environ.get("WATCHDOG_PID")
    try:
        if owner and int(owner) != pid:
            return None
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r / WATCHDOG_PID=%r are not numbers: no watchdog pings", usec, owner)
        return None
    return value / 2e6 if value > 0 else None


class ServiceNotifier:
    """Messages to the service manager on ``address`` (see the module docstring for what and when)."""

    def __init__(self, address: str, *, watchdog_s: float | None = None) -> None:
        self.address = address
        self.watchdog_s = watchdog_s
        self._to = notify_address(address)
        self._sock: socket.socket | None = None
        self._failed = False
        self.sent: list[str] = []  # the last messages, newest last (kept short: for logs and tests)

    @classmethod
    def from_env(cls, environ: MutableMapping[str, str] | None = None) -> ServiceNotifier | None:
        """A notifier when ``NOTIFY_SOCKET`` is set (the variables are then removed from ``environ``,
        by default ``os.environ``), else None."""
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", "")
        watchdog = watchdog_interval_s(env, os.getpid())
        env.pop("WATCHDOG_USEC", None)
        env.pop("WATCHDOG_PID", None)
        if not address or not (address.startswith("/") or address.startswith("@")):
            if address:
                log.warning("NOTIFY_SOCKET=%r is neither a path nor @abstract: not notifying", address)
            return None
        return cls(address, watchdog_s=watchdog)

    def send(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) as one datagram; False if it failed."""
        message = "\n".join(fields)
        try:
            self._transmit(message.encode())
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("sd_notify to %s failed: %s (later failures are not logged)", self.address, exc)
            return False
        self.sent = [*self.sent[-31:], message]
        return True

    def _transmit(self, data: bytes) -> None:
        """The I/O edge: one datagram to the service manager (``OSError`` when it cannot be sent)."""
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        self._sock.sendto(data, self._to)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}", "STATUS=reloading")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping the units")

    async def watchdog(self, progress: Callable[[], bool],
                       sleep: Callable[[float], Awaitable[None]] | None = None) -> None:
        """Ping every ``watchdog_s`` while ``progress()`` holds (until cancelled); nothing without a watchdog."""
        if self.watchdog_s is None:
            return
        nap = sleep or asyncio.sleep
        while True:
            await nap(self.watchdog_s)
            if progress():
                self.send("WATCHDOG=1")
            else:
                log.warning("the engine loop made no progress in %.3gs: no watchdog ping", self.watchdog_s)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

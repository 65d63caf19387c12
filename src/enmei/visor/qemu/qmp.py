"""One QMP connection to one QEMU, with bounded waits and typed errors (``QmpError``).

Wraps ``qemu.qmp.QMPClient``:

* ``connect`` retries until the socket answers or its deadline passes;
* ``execute`` bounds every command by a timeout; if the connection was lost it reconnects once
  (QEMU may still be there); every failure is a ``QmpError`` naming the command;
* ``run_job`` starts a background job (``snapshot-save``...), waits for it to conclude, dismisses it,
  and raises ``QmpError`` with QEMU's own message if it failed;
* QMP events go to ``on_event(name, data, wall_time)`` as they arrive (``wall_time`` is QEMU's
  timestamp); a lost connection is reported once through ``on_lost``.

The socket is touched only by four methods, the I/O edge: ``_open`` (one connection attempt),
``_send`` (one command, answered with QMP's wire shape ``{"return": ...}`` or ``{"error": {"class",
"desc"}}``), ``_link_up`` and ``_close_link``. Incoming events enter through ``_deliver`` (their wire
shape ``{"event", "data", "timestamp"}``) and a lost link through ``_link_lost``. ``enmei.visor.qemu.fake``
overrides only those four to answer like a scripted QEMU; everything else here is what runs for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, ExecInterruptedError, ExecuteError, QMPClient, QMPError, Runstate

from enmei.clock import wait_for
from enmei.visor.qemu.errors import QmpError

__all__ = ["EventFn", "Monitor"]

log = logging.getLogger(__name__)

EventFn = Callable[[str, Mapping[str, Any], float], None]
_job_ids = itertools.count(1)


class Monitor:
    """The QMP monitor of unit ``unit`` at socket ``path``."""

    def __init__(self, unit: str, path: Path, *, timeout_s: float, on_event: EventFn | None = None,
                 on_lost: Callable[[], None] | None = None) -> None:
        self.unit = unit
        self.path = path
        self.timeout_s = timeout_s
        self.on_event = on_event
        self.on_lost = on_lost
        self._client: QMPClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._link_up()

    async def connect(self, *, deadline_s: float) -> None:
        """Connect, retrying every 20 ms for up to ``deadline_s``. Raises ``QmpError`` after that."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        last: BaseException | None = None
        while True:
            try:
                await self._open(max(0.1, end - loop.time()))
            except (ConnectError, OSError, TimeoutError, QMPError) as exc:
                last = exc
            else:
                return
            if loop.time() >= end or self._closed:
                break
            await asyncio.sleep(0.02)
        raise QmpError(self.unit, "QMP connect", f"{self.path} did not answer within {deadline_s:.1f} s"
                       f" ({type(last).__name__}: {last})")

    async def execute(self, cmd: str, args: Mapping[str, Any] | None = None, *,
                      timeout_s: float | None = None) -> Any:
        """Run one QMP command and return its answer. Raises ``QmpError`` (QEMU's error class and
        message, a timeout, or no connection), never a ``qemu.qmp`` exception."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        if self._closed:
            raise QmpError(self.unit, cmd, "the monitor is closed")
        if not self.connected:
            async with self._lock:
                if not self.connected:
                    await self._detach()
                    await self.connect(deadline_s=min(2.0, timeout))
        try:
            reply = await wait_for(self._send(cmd, dict(args) if args else None), timeout=timeout)
        except TimeoutError as exc:
            raise QmpError(self.unit, cmd, f"no answer within {timeout:.1f} s") from exc
        except (ExecInterruptedError, QMPError, OSError, EOFError) as exc:
            raise QmpError(self.unit, cmd, f"connection lost ({type(exc).__name__}: {exc})") from exc
        if "error" in reply:
            err = reply["error"]
            raise QmpError(self.unit, cmd, f"{err.get('class')}: {err.get('desc')}")
        return reply.get("return")

    async def run_job(self, cmd: str, args: Mapping[str, Any], *, timeout_s: float,
                      poll_s: float = 0.005) -> float:
        """Start job ``cmd`` and wait until it concludes; returns how long it took (seconds).

        Raises ``QmpError`` with QEMU's message if the job failed, or if it did not conclude within
        ``timeout_s`` (the job is then cancelled).
        """
        loop = asyncio.get_running_loop()
        job_id = f"enmei-{cmd}-{next(_job_ids)}"
        start = loop.time()
        await self.execute(cmd, {"job-id": job_id, **args})
        try:
            while True:
                jobs = await self.execute("query-jobs")
                job = next((j for j in jobs if j.get("id") == job_id), None)
                if job is None:
                    raise QmpError(self.unit, cmd, f"job {job_id} vanished")
                if job["status"] == "concluded":
                    break
                if loop.time() - start > timeout_s:
                    with contextlib.suppress(QmpError):
                        await self.execute("job-cancel", {"id": job_id})
                    raise QmpError(self.unit, cmd, f"did not finish within {timeout_s:.1f} s")
                await asyncio.sleep(poll_s)
        finally:
            with contextlib.suppress(QmpError):
                await self.execute("job-dismiss", {"id": job_id})
        if job.get("error"):
            raise QmpError(self.unit, cmd, str(job["error"]))
        return loop.time() - start

    async def drain(self, timeout_s: float) -> None:
        """After QEMU exited: wait (at most ``timeout_s``) until every event it sent before hanging up has
        been read and delivered, so the exit is judged by its last events (``SHUTDOWN``,
        ``GUEST_PANICKED``) even when the process's end was seen first. Never raises."""
        with contextlib.suppress(Exception):
            await wait_for(self._drained(), timeout=timeout_s)

    async def close(self) -> None:
        """Disconnect and stop the event task. Never raises. The monitor cannot be used afterwards."""
        self._closed = True
        await self._detach()

    # -- the I/O edge (a fake overrides these four) -------------------------------------------------

    async def _open(self, timeout_s: float) -> None:
        """One attempt to connect; raises ``OSError`` (no socket...), ``ConnectError`` or ``TimeoutError``."""
        if not self.path.exists():  # (no client: qemu.qmp would log every failed attempt)
            raise FileNotFoundError(f"no socket at {self.path}")
        client = QMPClient(f"enmei-{self.unit}")
        try:
            await wait_for(client.connect(str(self.path)), timeout=timeout_s)
        except BaseException:
            await _quiet_disconnect(client)
            raise
        self._client = client
        self._tasks = [asyncio.create_task(self._pump_events(client), name=f"qmp-events-{self.unit}"),
                       asyncio.create_task(self._watch(client), name=f"qmp-watch-{self.unit}")]

    async def _send(self, cmd: str, args: dict[str, Any] | None) -> dict[str, Any]:
        """Send one command; its reply in QMP's wire shape. Raises ``QMPError``/``OSError`` if the link fails."""
        client = self._client
        if client is None:
            raise ConnectionError("not connected")
        try:
            return {"return": await client.execute(cmd, args)}
        except ExecuteError as exc:
            return {"error": {"class": exc.error_class, "desc": exc.error.error.desc}}

    def _link_up(self) -> bool:
        return self._client is not None and self._client.runstate == Runstate.RUNNING

    async def _drained(self) -> None:
        """Until the link is down (the reader met QEMU's hang-up) and no read event waits for delivery."""
        client = self._client
        if client is None:
            return
        while client.runstate in (Runstate.CONNECTING, Runstate.RUNNING):
            await client.runstate_changed()
        for msg in client.events.clear():  # read but not yet delivered by the pump: delivered now, in order
            self._deliver(msg)

    async def _close_link(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await _quiet_disconnect(client)

    # -- internals ---------------------------------------------------------------------------------

    async def _detach(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self._close_link()

    def _deliver(self, msg: Mapping[str, Any]) -> None:
        """One event as it came off the wire; passed on to ``on_event`` (an exception there is logged)."""
        if self.on_event is None:
            return
        ts: Any = msg.get("timestamp") or {}
        data: Any = msg.get("data") or {}
        wall = float(ts.get("seconds", 0)) + float(ts.get("microseconds", 0)) / 1e6
        try:
            self.on_event(str(msg["event"]), dict(data), wall)
        except Exception:
            log.exception("unit %s: handler of QMP event %s failed", self.unit, msg.get("event"))

    def _link_lost(self) -> None:
        if not self._closed and self.on_lost is not None:
            self.on_lost()

    async def _pump_events(self, client: QMPClient) -> None:
        async for msg in client.events:
            self._deliver(msg)

    async def _watch(self, client: QMPClient) -> None:
        while client.runstate in (Runstate.CONNECTING, Runstate.RUNNING):
            await client.runstate_changed()
        self._link_lost()


async def _quiet_disconnect(client: QMPClient) -> None:
    # After QEMU hangs up (quit, exit) disconnect() re-raises the reader's EOFError: expected here. The
    # bound is generous: a disconnect cut short on a busy machine leaves its socket open (a leak).
    with contextlib.suppress(Exception):
        await wait_for(client.disconnect(), timeout=10.0)

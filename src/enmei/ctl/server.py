"""The ctl server: an asyncio UNIX server in the engine's loop, on ``state_dir/ctl.sock`` (mode 0600).

Promises:

* **Who.** Only the state dir's owner reaches the socket (the dir is 0700, the socket 0600); no token.
* **One at a time per unit, never suppressed.** start/stop/restart/reset go through
  ``Engine.control`` — the same path as the web's actions: an operator's command pre-empts a running
  repair, and the answer says which (or why it was refused).
* **A client cannot stall the engine.** Everything here awaits; a request is at most ``MAX_REQUEST``
  bytes (a longer line is answered with an error and the connection closed, its bytes not kept); a
  client gets ``CLIENT_TIMEOUT_S`` to send each request and to take each answer, then is dropped; at most
  ``MAX_CLIENTS`` connections at once (one more is told so and closed). Reading a log tail runs in a thread,
  bounded in bytes.
* **Stale sockets.** It is started only by a supervisor holding the state dir's lock, so a socket file
  left there is a dead enmei's: it is replaced. Anything else in its place (not a socket, a link) is not
  touched: the server does not start, and says why. The socket is removed at ``close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enmei.ctl.protocol import (
    CLIENT_TIMEOUT_S,
    MAX_CLIENTS,
    MAX_LINES,
    MAX_REQUEST,
    SOCKET_NAME,
    STREAMS,
    UNIT_OPS,
    UPDATE_ARGS,
    UPDATE_REMEDIES,
    UPDATE_WAIT_S,
    UPGRADE_WAIT_S,
    CtlError,
    decode,
    encode,
)

if TYPE_CHECKING:
    from enmei.engine.loop import Engine

__all__ = ["ControlServer", "log_tail", "unit_status"]

log = logging.getLogger(__name__)

#: how long a command's answer may take (a pre-empted repair letting go of its unit, a stop)
_COMMAND_WAIT_S = 60.0
_TAIL_BYTES = 4 * 2**20
_SUN_PATH_MAX = 107


def unit_status(engine: Engine, name: str) -> dict[str, Any]:
    """One unit as ``ctl status`` shows it (on the loop)."""
    unit = engine.units[name]
    now = engine.clock.monotonic()
    view = unit.view(now)
    ident = unit.backend.identity(name)
    d = view.as_dict()
    d["pid"] = ident.pid if ident is not None else None
    d["state_for_s"] = round(now - unit.state_since, 3)
    d["last_reset_ago_s"] = None if view.last_reset is None else round(now - view.last_reset, 3)
    d["crash_retries"] = unit.crash_retries
    d["probe_restarts"] = unit.probe_restarts
    run = unit.remedy
    d["remedy_id"] = run.remedy_id if run is not None else None
    return d


def log_tail(path: Path | None, lines: int) -> dict[str, Any]:
    """The newest ``lines`` lines of a captured log (at most the last 4 MiB of it); never raises."""
    if path is None:
        return {"path": None, "lines": [], "error": "this backend captures no such log"}
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - _TAIL_BYTES))
            data = f.read(_TAIL_BYTES)
    except FileNotFoundError:
        return {"path": str(path), "lines": [], "error": "no log yet"}
    except OSError as exc:
        return {"path": str(path), "lines": [], "error": str(exc)}
    text = data.decode("utf-8", errors="replace").splitlines()
    if size > _TAIL_BYTES and text:
        text = text[1:]  # the first line was cut
    return {"path": str(path), "size": size, "lines": text[-lines:], "error": None}


class ControlServer:
    """Serve ctl requests for ``engine`` on ``state_dir/ctl.sock`` (see the module docstring)."""

    def __init__(self, engine: Engine, state_dir: Path) -> None:
        self.engine = engine
        self.path = Path(state_dir) / SOCKET_NAME
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[Any]] = set()
        self._dirfd: int | None = None
        self.served = 0
        self.dropped = 0

    async def start(self) -> None:
        """Bind and listen. ``CtlError`` (nothing bound) if the path holds something that is not a socket,
        or cannot be bound."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise CtlError(f"{self.path}: exists and is not a socket; not replaced (remove it to use enmei ctl)")
            os.unlink(self.path)  # a dead enmei's: we hold the state dir's lock
            log.info("replaced the stale ctl socket %s", self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self._address())
            os.chmod(self.path, 0o600)  # (the state dir is 0700: nobody else could reach it meanwhile)
            sock.listen(MAX_CLIENTS)
            sock.setblocking(False)
            self._server = await asyncio.start_unix_server(self._client, sock=sock, limit=MAX_REQUEST)
        except OSError as exc:
            sock.close()
            self._close_dirfd()
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                    os.unlink(self.path)
            raise CtlError(f"{self.path}: cannot listen for enmei ctl: {exc}") from exc

    def _address(self) -> str:
        """The path to bind; through ``/proc/self/fd`` when the real one is longer than a UNIX socket's."""
        if len(os.fsencode(self.path)) <= _SUN_PATH_MAX:
            return str(self.path)
        self._dirfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        return f"/proc/self/fd/{self._dirfd}/{self.path.name}"

    def _close_dirfd(self) -> None:
        if self._dirfd is not None:
            os.close(self._dirfd)
            self._dirfd = None

    async def close(self) -> None:
        """Stop listening, drop the clients, remove the socket file."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        if server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await server.wait_closed()
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        self._close_dirfd()

    async def serve(self) -> None:
        """Start, serve until cancelled, then close."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()

    # -- one client --------------------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            if len(self._clients) > MAX_CLIENTS:
                self.dropped += 1
                await self._send(writer, {"ok": False, "error": f"too many ctl clients (at most {MAX_CLIENTS})"})
                return
            while True:
                try:
                    async with asyncio.timeout(CLIENT_TIMEOUT_S):
                        line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError:
                    return  # the client closed
                except asyncio.LimitOverrunError:
                    self.dropped += 1
                    await self._send(writer, {"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"})
                    return
                except TimeoutError:
                    self.dropped += 1
                    return
                answer = await self._answer(line)
                self.served += 1
                if not await self._send(writer, answer):
                    self.dropped += 1
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:  # a bug here must end this client only
            log.exception("ctl client failed")
        finally:
            self._clients.discard(task)
            writer.transport.abort()  # at once: a client that reads nothing must not keep its buffer

    async def _send(self, writer: asyncio.StreamWriter, answer: dict[str, Any]) -> bool:
        writer.write(encode(answer))
        try:
            async with asyncio.timeout(CLIENT_TIMEOUT_S):
                await writer.drain()
        except (TimeoutError, ConnectionError):
            return False
        return True

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            req = decode(line)
            return {"ok": True, **await self._dispatch(req)}
        except CtlError as exc:
            return {"ok": False, "error": str(exc)}

    def _unit(self, req: dict[str, Any]) -> str:
        name = req.get("unit")
        if not isinstance(name, str) or not name:
            raise CtlError(f"{req.get('op')} needs a unit")
        if name not in self.engine.units:
            known = ", ".join(sorted(self.engine.units)) or "none"
            raise CtlError(f"no unit named {name!r} (units: {known})")
        return name

    async def _command(self, op: str, name: str, action: str, args: dict[str, Any], by: str,
                       wait_s: float) -> dict[str, Any]:
        reply = self.engine.control(action, name, args, by=by)
        try:
            answer = await _within(reply, wait_s)
        except TimeoutError:
            return {"unit": name, "action": op, "queued": True,
                    "note": f"still running after {wait_s:g}s; see enmei ctl status, enmei box tail"}
        if answer.get("rejected") or answer.get("suppressed"):
            raise CtlError(f"{op} {name}: {answer.get('rejected') or answer.get('suppressed')}")
        outcome = answer.get("outcome") or {}
        if outcome.get("state") not in (None, "succeeded"):
            raise CtlError(f"{op} {name}: {outcome.get('state')}: {outcome.get('detail')} "
                           f"(record {answer.get('seq')})")
        return answer

    async def _dispatch(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        engine = self.engine
        by = f"operator:ctl(uid {os.getuid()})"
        if op == "status":
            names = [self._unit(req)] if req.get("unit") is not None else list(engine.units)
            upgrader = getattr(engine, "upgrade", None)
            return {"units": [unit_status(engine, n) for n in names], "pid": os.getpid(),
                    "config": str(engine.loaded.path),
                    "upgrade": upgrader.status() if upgrader is not None else None}
        if op in UNIT_OPS:
            return await self._command(str(op), self._unit(req), str(op), {}, by, _COMMAND_WAIT_S)
        if op == "update":
            name = self._unit(req)
            args = {k: req[k] for k in UPDATE_ARGS if req.get(k) is not None}
            return await self._command("update", name, self._update_remedy(name, args), args, by, UPDATE_WAIT_S)
        if op == "reload":
            hook = getattr(engine, "request_reload", None)
            if hook is None:
                raise CtlError("reload is not available in this build")
            answer = hook(by=by)
            if isinstance(answer, Awaitable):
                answer = await answer
            return {"reload": answer}
        if op == "upgrade":
            return {"upgrade": await self._upgrade(req, by)}
        if op == "logs":
            name = self._unit(req)
            lines = req.get("lines", 50)
            stream = req.get("stream", "stderr")
            if not isinstance(lines, int) or isinstance(lines, bool) or not 1 <= lines <= MAX_LINES:
                raise CtlError(f"lines must be from 1 to {MAX_LINES}")
            if stream not in STREAMS:
                raise CtlError(f"stream must be one of {', '.join(STREAMS)}, not {stream!r}")
            path = engine.units[name].backend.log_path(name, stream)
            return {"unit": name, "stream": stream, **await asyncio.to_thread(log_tail, path, lines)}
        raise CtlError(f"unknown op {op!r} (ops: status, start, stop, restart, reset, reload, logs, update, upgrade)")

    async def _upgrade(self, req: dict[str, Any], by: str) -> dict[str, Any]:
        """``enmei ctl upgrade``: start a successor, answer with its self-check's end (see the protocol)."""
        from enmei.engine.upgrade import UpgradeError

        upgrader = getattr(self.engine, "upgrade", None)
        if upgrader is None:
            raise CtlError("this enmei cannot be upgraded (only `enmei up` can)")
        enmei = req.get("enmei")
        if enmei is not None and (not isinstance(enmei, list) or not enmei
                                  or not all(isinstance(a, str) and a for a in enmei)):
            raise CtlError("enmei must be a list of strings: the executable, then its first arguments")
        timeouts: dict[str, float] = {}
        for key in ("check_timeout_s", "takeover_timeout_s"):
            value = req.get(key)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
                    raise CtlError(f"{key} must be a number of seconds from 0 to 3600")
                timeouts[key] = float(value)
        try:
            answer: dict[str, Any] = await _within(asyncio.ensure_future(
                upgrader.request(enmei=enmei, by=by, **timeouts)), UPGRADE_WAIT_S)
        except UpgradeError as exc:
            raise CtlError(str(exc)) from None
        return answer

    def _update_remedy(self, name: str, args: dict[str, Any]) -> str:
        """The update remedy for ``name``: the one its arguments name (``command``: ``handover``; a VM's
        boot files: ``shadow_update``; the engine refuses it, on the record, for a backend that lacks it),
        else the first of ``UPDATE_REMEDIES`` its backend can have."""
        from enmei.remedy import REMEDIES

        if "command" in args:
            return "handover"
        if args:
            return "shadow_update"
        backend = self.engine.units[name].backend
        why = []
        for action in UPDATE_REMEDIES:
            remedy = REMEDIES.get(action)
            if remedy is None:
                continue
            refusal = remedy.refusal(backend.capabilities, backend.kind)
            if refusal is None:
                return action
            why.append(refusal)
        raise CtlError(f"update {name}: no update for a {backend.kind} unit ({'; '.join(why) or 'none registered'})")


async def _within(fut: asyncio.Future[dict[str, Any]], seconds: float) -> dict[str, Any]:
    async with asyncio.timeout(seconds):
        return await asyncio.shield(fut)


async def serve_control(engine: Engine) -> None:
    """``enmei up``'s ctl server: listen once the engine has started, until cancelled (then the socket is
    removed). A socket that cannot be made is journaled as a warning; supervision goes on without ctl."""
    from enmei.model import RecordKind

    await engine.started.wait()
    server = ControlServer(engine, engine.state_dir)
    try:
        await server.start()
    except CtlError as exc:
        log.error("%s", exc)
        engine.record(RecordKind.ALERT, None, {"severity": "warning", "message": f"enmei ctl is unavailable: {exc}"})
        return
    try:
        await asyncio.Event().wait()
    finally:
        await server.close()

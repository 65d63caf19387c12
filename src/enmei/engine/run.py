"""Run a supervisor from a config until told to stop: state dir, journal, engine, signals.

Before anything starts, the state dir is checked and locked (``StateDir``: refused if another user could
have planted files in it, or another enmei uses it) and the journal is opened only if it is the one the
anchor key last signed (``IntegrityError`` otherwise: a cut, rolled-back or replaced journal is never
continued silently; ``enmei box seal`` starts a new segment).

SIGTERM and SIGINT stop the units gracefully, flush the journal and return; a second one while stopping
is ignored (the stop already has its deadlines). SIGHUP never kills enmei: it is journaled and reloads
the config file (``Engine.request_reload``: the diff applied unit by unit, or the old config kept on any
error), and supervision goes on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from enmei.box import Journal
from enmei.clock import Clock
from enmei.config.load import LoadedConfig
from enmei.ctl.server import serve_control
from enmei.engine.loop import Engine, journal_for
from enmei.engine.notify import ServiceNotifier
from enmei.engine.statedir import StateDir
from enmei.model import RecordKind
from enmei.policy.base import Policy

__all__ = ["supervise"]

log = logging.getLogger(__name__)

Hook = Callable[[Engine], Coroutine[Any, Any, None]]


async def supervise(loaded: LoadedConfig, *, policy: Policy | None = None, clock: Clock | None = None,
                    on_start: Callable[[Engine], None] | None = None, companion: Hook | None = None) -> Engine:
    """Supervise until SIGTERM/SIGINT (or ``engine.stop()``). Nothing is started, and nothing in the state
    dir changed but its lock file, if: the state dir or a file of it is unsafe (``UnsafePathError``),
    another enmei holds the state dir or the journal can't open (``BoxError``), the journal is not the one
    last signed or its key is missing (``IntegrityError``), the policy file does not load (``PolicyError``).

    The policy is ``policy`` if given, else ``[supervisor] policy`` (a Starlark or TOML rules file, run in
    a sandbox process), else the shipped default library. ``companion`` runs next to the engine (a web
    server, a scenario) and is cancelled when it ends.
    """
    from enmei.detect.wiring import judge_factory
    from enmei.policy.manager import open_policy

    hup_before = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # from the first instant: never killed by it
    # Read (and removed from the environment) before any child exists: the policy sandbox, the units.
    notifier = ServiceNotifier.from_env()
    try:
        with StateDir(loaded.state_dir, journal=loaded.journal_path, key=loaded.anchor_key_path):
            if policy is None:
                policy = open_policy(loaded.policy_path)
            journal = journal_for(loaded).open()
            try:
                return await _run(loaded, journal, policy, clock, on_start, companion, judge_factory, notifier)
            finally:
                journal.close()
    except Exception as exc:
        if notifier is not None:  # systemctl status says why enmei did not come up
            notifier.send(f"STATUS=cannot start: {type(exc).__name__}: {exc}"[:1000])
        raise
    finally:
        if notifier is not None:
            notifier.close()
        signal.signal(signal.SIGHUP, hup_before)


async def _run(loaded: LoadedConfig, journal: Journal, policy: Policy, clock: Clock | None,
               on_start: Callable[[Engine], None] | None, companion: Hook | None, judge_factory: Any,
               notifier: ServiceNotifier | None) -> Engine:
    engine = Engine(loaded, journal=journal, policy=policy, clock=clock, judge_factory=judge_factory)
    if on_start is not None:
        on_start(engine)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, engine.stop)
    service: list[asyncio.Task[None]] = []
    if notifier is not None:
        service = _serve_notify(engine, notifier)

    def hangup() -> None:
        log.warning("SIGHUP received: reloading %s", loaded.path)
        try:
            engine.record(RecordKind.SUPERVISOR, None, {"event": "signal", "signal": "SIGHUP",
                                                        "action": "reload", "pid": os.getpid()})
            engine.request_reload(by="SIGHUP")
        except Exception:  # the journal closing under us: the log line above is all we can do
            log.exception("cannot reload on SIGHUP")

    loop.add_signal_handler(signal.SIGHUP, hangup)
    side: asyncio.Task[None] | None = None
    service.append(asyncio.create_task(serve_control(engine), name="ctl"))  # state_dir/ctl.sock
    try:
        if companion is not None:
            side = asyncio.create_task(companion(engine), name="companion")
        await engine.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # remove_signal_handler put back the default: death
        for task in [*service, *([side] if side is not None else [])]:
            task.cancel()
        await asyncio.gather(*service, *([side] if side is not None else []), return_exceptions=True)
    return engine


def _status(engine: Engine) -> str:
    running = sum(1 for u in engine.units.values() if u.alive())
    return f"supervising {len(engine.units)} unit{'s' if len(engine.units) != 1 else ''}: {running} running"


def _serve_notify(engine: Engine, notifier: ServiceNotifier) -> list[asyncio.Task[None]]:
    """The tasks that tell the service manager about enmei (``enmei.engine.notify``); they run outside the
    engine's own task set so that the watchdog is still fed while the units are stopped at shutdown."""

    async def ready() -> None:
        await engine.first_starts.wait()
        notifier.ready(_status(engine))

    async def stopping() -> None:
        await engine.stop_requested.wait()
        notifier.stopping()

    engine.reloader.on_reloading = notifier.reloading
    engine.reloader.on_done = lambda diff: notifier.ready(f"reloaded ({diff.describe()}); {_status(engine)}")
    return [asyncio.create_task(ready(), name="sd_notify ready"),
            asyncio.create_task(stopping(), name="sd_notify stopping"),
            asyncio.create_task(notifier.watchdog(lambda: engine.stop_requested.is_set() or engine.progress()),
                                name="sd_notify watchdog")]

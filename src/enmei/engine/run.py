"""Run a supervisor from a config until told to stop: state dir, journal, engine, signals.

Before anything starts, the state dir is checked and locked (``StateDir``: refused if another user could
have planted files in it, or another enmei uses it) and the journal is opened only if it is the one the
anchor key last signed (``IntegrityError`` otherwise: a cut, rolled-back or replaced journal is never
continued silently; ``enmei box seal`` starts a new segment).

``enmei ctl upgrade`` hands supervision to a successor process without stopping a unit, or falls back to
this one (``enmei.engine.upgrade``); a successor's side runs here too (``handoff``).

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
import time
from collections.abc import Callable, Coroutine
from typing import Any

from enmei.box.api import JournalWriter
from enmei.clock import Clock
from enmei.config.load import LoadedConfig
from enmei.ctl.server import serve_control
from enmei.engine.loop import Engine, journal_for
from enmei.engine.notify import ServiceNotifier
from enmei.engine.statedir import LOCK_NAME, StateDir
from enmei.engine.successor import Handed, Handoff
from enmei.engine.upgrade import Upgrader
from enmei.model import RecordKind
from enmei.policy.base import Policy
from enmei.watch.beat import watch_tasks

__all__ = ["supervise"]

log = logging.getLogger(__name__)

Hook = Callable[[Engine], Coroutine[Any, Any, None]]


async def supervise(loaded: LoadedConfig, *, policy: Policy | None = None, clock: Clock | None = None,
                    on_start: Callable[[Engine], None] | None = None, companion: Hook | None = None,
                    upgrader: Upgrader | None = None, handoff: Handoff | None = None) -> Engine:
    """Supervise until SIGTERM/SIGINT (or ``engine.stop()``). Nothing is started, and nothing in the state
    dir changed but its lock file, if: the state dir or a file of it is unsafe (``UnsafePathError``),
    another enmei holds the state dir or the journal can't open (``BoxError``), the journal is not the one
    last signed or its key is missing (``IntegrityError``), the policy file does not load (``PolicyError``).

    The policy is ``policy`` if given, else ``[supervisor] policy`` (a Starlark or TOML rules file, run in
    a sandbox process), else the shipped default library. ``companion`` runs next to the engine (a web
    server, a scenario) and is cancelled when it ends; it is called again for an engine that supervises
    again after a failed upgrade.

    ``upgrader``: this enmei may be upgraded (``enmei ctl upgrade``, ``enmei.engine.upgrade``); after a
    handover this returns once the successor supervises (``upgrader.handed_to``), the units running; after
    a failed takeover a new engine supervises again, adopting them. ``handoff``: this enmei *is* a
    successor: the state dir's lock is the inherited one, the self-check is reported before anything is
    written, and supervision starts only once the old enmei let go (``UpgradeError`` if it gave up).
    """
    from enmei.detect.wiring import judge_factory
    from enmei.policy.manager import open_policy

    hup_before = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # from the first instant: never killed by it
    # Read (and removed from the environment) before any child exists: the policy sandbox, the units.
    notifier = ServiceNotifier.from_env()
    own_policy = policy is None
    try:
        with StateDir(loaded.state_dir, journal=loaded.journal_path, key=loaded.anchor_key_path,
                      lock_fd=handoff.lock_fd if handoff is not None else None) as state:
            if policy is None:
                policy = open_policy(loaded.policy_path)
            handed = await _self_check(loaded, policy, handoff, state) if handoff is not None else None
            if upgrader is not None:
                upgrader.state_dir = state
                upgrader.notifier = notifier
            first: list[dict[str, Any]] = []  # upgrade records the next engine writes first
            while True:
                journal = journal_for(loaded).open()
                try:
                    engine = await _run(loaded, journal, policy, clock, on_start, companion, judge_factory, notifier,
                                        upgrader, handoff, handed, first)
                finally:
                    journal.close()
                pending = upgrader.take_pending() if upgrader is not None else None
                if pending is None:
                    return engine
                why = await upgrader.hand_over(pending, dict(engine.probe_next)) if upgrader is not None else None
                if upgrader is not None:
                    await upgrader.settle()
                if why is None or upgrader is None:
                    return engine
                # The successor failed the takeover (it is dead now): supervise again, as a restart would.
                first = [upgrader.fell_back_record(why, pending)]
                handed = Handed(pending.stopped_at, dict(engine.probe_next))
                handoff = None
                state.claim()
                if own_policy:  # the stopped engine closed its policy's sandbox
                    policy = open_policy(loaded.policy_path)
    except Exception as exc:
        if handoff is not None:
            handoff.fail(f"{type(exc).__name__}: {exc}")
        if notifier is not None:  # systemctl status says why enmei did not come up
            notifier.send(f"STATUS=cannot start: {type(exc).__name__}: {exc}"[:1000])
        raise
    finally:
        if notifier is not None:
            notifier.close()
        signal.signal(signal.SIGHUP, hup_before)


async def _self_check(loaded: LoadedConfig, policy: Policy, handoff: Handoff, state: StateDir) -> Handed:
    """A successor's self-check (``enmei.engine.successor``), reported to the old enmei; then wait for it
    to let go, and claim the state dir. Raises what failed (reported first)."""
    from enmei.engine.successor import check_journal, check_listener

    checks: dict[str, Any] = {"config": str(loaded.path), "config_sha256": loaded.sha256,
                              "units": len(loaded.config.units), "policy": policy.version,
                              "lock": str(state.path / LOCK_NAME)}
    checks.update(await asyncio.to_thread(check_journal, loaded))
    checks.update(check_listener(handoff.web_socket()))
    # What the takeover needs, imported now, while the old enmei still supervises.
    import enmei.visor.process
    import enmei.web.app  # noqa: F401

    handoff.report(True, checks)
    handed = await handoff.await_handed()
    handoff.resume_priority()
    state.claim()
    return handed


async def _run(loaded: LoadedConfig, journal: JournalWriter, policy: Policy, clock: Clock | None,
               on_start: Callable[[Engine], None] | None, companion: Hook | None, judge_factory: Any,
               notifier: ServiceNotifier | None, upgrader: Upgrader | None = None, handoff: Handoff | None = None,
               handed: Handed | None = None, first: list[dict[str, Any]] | None = None) -> Engine:
    engine = Engine(loaded, journal=journal, policy=policy, clock=clock, judge_factory=judge_factory)
    engine.upgrade = upgrader
    if upgrader is not None:
        upgrader.engine = engine
    if handed is not None:
        engine.probe_due = dict(handed.probe_due)  # the probes go on with the schedules they had
    for body in first or []:
        engine.record(RecordKind.UPGRADE, None, body)
    if on_start is not None:
        on_start(engine)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, engine.stop)
    service: list[asyncio.Task[None]] = []
    if notifier is not None:
        service = _serve_notify(engine, notifier)
    if handoff is not None and handed is not None:
        service.append(asyncio.create_task(_took_over(engine, handoff, handed), name="upgrade: took over"))

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
    if loaded.config.fleet is not None:  # host leases and the leader (enmei.fleet)
        from enmei.fleet.service import serve_fleet

        service.append(asyncio.create_task(serve_fleet(engine), name="fleet"))
    service.extend(watch_tasks(engine))  # the heartbeat and the watchers' reports (enmei watch)
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
        await asyncio.gather(*service, return_exceptions=True)
        if side is not None:
            if upgrader is not None and upgrader.handing_over:
                # The web server finishes its last requests while the successor takes over (it stops
                # accepting within a tick; the listener stays open in the successor's hands).
                upgrader.linger(side)
            else:
                await asyncio.gather(side, return_exceptions=True)
    return engine


async def _took_over(engine: Engine, handoff: Handoff, handed: Handed) -> None:
    """Once the engine supervises (units adopted, probes scheduled): journal ``handed_over`` and tell the
    old enmei, which then exits."""
    await engine.started.wait()
    now = time.monotonic()
    takeover_s = round(now - handed.stopped_at, 3)
    # Where the time went: the old enmei letting go (engine, web, journal closed), then this one taking
    # over (journal opened, units adopted, probes scheduled).
    parts = {} if handed.sent_at is None or handed.received_at is None else {
        "let_go_s": round(handed.sent_at - handed.stopped_at, 3), "take_s": round(now - handed.received_at, 3)}
    pids = {name: (ident.pid if (ident := u.backend.identity(name)) is not None else None)
            for name, u in engine.units.items()}
    body = {"event": "handed_over", "from_pid": handoff.from_pid, "pid": os.getpid(), "takeover_s": takeover_s,
            "units": len(pids), "running": sum(1 for p in pids.values() if p is not None), "pids": pids,
            "old_died": handed.old_died, **parts}
    engine.record(RecordKind.UPGRADE, None, body)
    if engine.upgrade is not None:
        engine.upgrade.last = {"state": "handed_over", **body}
    await handoff.confirm(body)


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
        if engine.upgrade is not None and engine.upgrade.handing_over:
            return  # not the service's stop: a successor takes over (it becomes MAINPID)
        notifier.stopping()

    engine.reloader.on_reloading = notifier.reloading
    engine.reloader.on_done = lambda diff: notifier.ready(f"reloaded ({diff.describe()}); {_status(engine)}")
    return [asyncio.create_task(ready(), name="sd_notify ready"),
            asyncio.create_task(stopping(), name="sd_notify stopping"),
            asyncio.create_task(notifier.watchdog(lambda: engine.stop_requested.is_set() or engine.progress()),
                                name="sd_notify watchdog")]

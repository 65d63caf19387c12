"""Run a supervisor from a config until told to stop: journal, engine, signals.

SIGTERM and SIGINT stop the units gracefully, flush the journal and return; a second one while stopping
is ignored (the stop already has its deadlines).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from enmei.clock import Clock
from enmei.config.load import LoadedConfig
from enmei.engine.loop import Engine, journal_for
from enmei.policy.base import Policy

__all__ = ["supervise"]

Hook = Callable[[Engine], Coroutine[Any, Any, None]]


async def supervise(loaded: LoadedConfig, *, policy: Policy | None = None, clock: Clock | None = None,
                    on_start: Callable[[Engine], None] | None = None, companion: Hook | None = None) -> Engine:
    """Supervise until SIGTERM/SIGINT (or ``engine.stop()``). Raises ``BoxError`` if the journal can't open,
    ``PolicyError`` if the policy file does not load (nothing is started then).

    The policy is ``policy`` if given, else ``[supervisor] policy`` (a Starlark or TOML rules file, run in
    a sandbox process), else the shipped default library. ``companion`` runs next to the engine (a web
    server, a scenario) and is cancelled when it ends.
    """
    from enmei.detect.wiring import judge_factory
    from enmei.policy.manager import open_policy

    if policy is None:
        policy = open_policy(loaded.policy_path)
    journal = journal_for(loaded).open()
    try:
        engine = Engine(loaded, journal=journal, policy=policy, clock=clock, judge_factory=judge_factory)
        if on_start is not None:
            on_start(engine)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, engine.stop)
        side: asyncio.Task[None] | None = None
        try:
            if companion is not None:
                side = asyncio.create_task(companion(engine), name="companion")
            await engine.run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if side is not None:
                side.cancel()
                await asyncio.gather(side, return_exceptions=True)
        return engine
    finally:
        journal.close()

"""The daemon kit: real Debian daemons (nginx, Redis, PostgreSQL) prepared in a temp dir, to run in the
foreground as enmei units on loopback ports — for the e2e tests, ``enmei bench daemons`` and the examples.

::

    from enmei import daemons
    d = daemons.prepare("redis")           # MissingDaemonError names the Debian package
    try:
        print(d.unit_toml())               # the enmei unit: command, probe, stop signal, start-up probe
        ...                                # run it (enmei up); d.request() is one client request
    finally:
        d.cleanup()

Each daemon is a module that registers itself (``enmei.daemons.registry``); what a prepared daemon
promises is in ``enmei.daemons.base``.
"""

from __future__ import annotations

from enmei.daemons import nginx, postgresql, redis  # noqa: F401 - each registers its daemon
from enmei.daemons.base import Daemon, DaemonError, MissingDaemonError, RequestFailed, free_port
from enmei.daemons.postgresql import PgClient
from enmei.daemons.registry import kinds, prepare, register

__all__ = ["Daemon", "DaemonError", "MissingDaemonError", "PgClient", "RequestFailed", "free_port", "kinds",
           "prepare", "register"]

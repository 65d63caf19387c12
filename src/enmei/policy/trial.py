"""A view of a config's units as the policy will see them, before anything runs (for ``enmei check``).

Each unit of the config appears RUNNING and healthy, with its own restart budget and windows, its
backend's kind and the capabilities that backend declares in the registry (``enmei.visor.registry``,
without making or importing the backend). Trying a policy's handlers against it (``PolicyManager(...,
trial_view=config_view(cfg))``) refuses, with the handler's file:line, a policy that would order a
remedy for a unit whose backend lacks what the remedy needs.

    >>> from enmei.config.model import config_model
    >>> cfg = config_model().model_validate({"units": {"web": {"command": ["/bin/true"]}}})
    >>> sorted(config_view(cfg).units["web"].capabilities)
    ['handover', 'logs', 'stats']
"""

from __future__ import annotations

from enmei.config.model import Config
from enmei.model import Health, UnitState
from enmei.policy.base import UnitView, View
from enmei.visor.registry import capabilities_of

__all__ = ["config_view"]


def config_view(config: Config, now: float = 1000.0) -> View:
    """Every unit of ``config``, running, as a ``View`` at ``now``. Raises ``UnknownBackendError`` for a
    backend nobody registered (a validated config has none)."""
    units = {}
    for name, spec in config.units.items():
        units[name] = UnitView(
            name=name, backend=spec.backend, state=UnitState.RUNNING, health=Health.OK, alive=True, uptime_s=120.0,
            remedy=None, restarts_in_window=1, budget=spec.restart.budget, window_s=spec.restart.window_s,
            next_delay_s=spec.restart.backoff_first_s, escalate_retry_s=spec.escalate.retry_every_s,
            rejuvenate_every_s=spec.rejuvenate.every_s, rejuvenate_window_s=spec.rejuvenate.window_s,
            stop_timeout_s=spec.stop_timeout_s,
            capabilities=frozenset(str(c) for c in capabilities_of(spec.backend)),
            breaker_failures=spec.escalate.breaker_failures, breaker_within_s=spec.escalate.breaker_within_s,
            breaker_open_s=spec.escalate.breaker_open_s, reset_after_s=spec.restart.reset_after_s)
    return View(now, units)

"""Views and units for policy tests."""

from __future__ import annotations

import dataclasses
from typing import Any

from enmei.model import Health, UnitState
from enmei.policy.base import UnitView, View

UNIT = UnitView(name="api", backend="process", state=UnitState.RUNNING, health=Health.OK, alive=True, uptime_s=60.0,
                remedy=None, restarts_in_window=0, budget=3, window_s=300.0, next_delay_s=0.0, escalate_retry_s=60.0,
                rejuvenate_every_s=None, rejuvenate_window_s=60.0, stop_timeout_s=10.0)


def unit(**changes: Any) -> UnitView:
    return dataclasses.replace(UNIT, **changes)


def view(now: float = 1000.0, *units: UnitView) -> View:
    return View(now, {u.name: u for u in (units or (UNIT,))})

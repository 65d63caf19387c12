"""D-Script: policies turn events into decisions. Pure: no I/O, no clock but the one in the view."""

from enmei.policy.base import Policy, UnitView, View
from enmei.policy.builtin import BuiltinPolicy

__all__ = ["BuiltinPolicy", "Policy", "UnitView", "View"]

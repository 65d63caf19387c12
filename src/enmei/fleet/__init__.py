"""The fleet: supervisors of several hosts sharing one PostgreSQL database for their journals
(``enmei.box.pgstore``) and for coordination — host registration, leases with fencing tokens, and a
leader for fleet actions (``enmei.fleet.lease``)."""

from __future__ import annotations

__all__: list[str] = []

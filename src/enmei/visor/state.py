"""The identities of running units, kept on disk so a restarted supervisor adopts them again.

One JSON file (format version 1): ``{"version": 1, "units": {name: Identity.to_json()}}``, written
to a temporary file, fsynced, then renamed over the old one, so a crash at any instant leaves either the
old or the new file, never half of one. A file that cannot be read is set aside as
``<file>.corrupt-<time>`` and an empty state is used: adoption is lost, supervision is not. A file
that is a symlink, another user's or writable by others is never read (it could name a process of
theirs for enmei to kill at stop): it is set aside the same way. Writes never follow a symlink.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

from enmei.fsafe import UnsafePathError, open_nofollow, write_atomic
from enmei.visor.base import Identity

__all__ = ["StateFile"]

log = logging.getLogger(__name__)

VERSION = 1


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Identity]:
        try:
            with os.fdopen(open_nofollow(self.path, "unit state", os.O_RDONLY), "rb") as f:
                data = json.loads(f.read())
            if int(data.get("version", 0)) != VERSION:
                raise ValueError(f"unknown state format {data.get('version')!r}")
            return {name: Identity.from_json(item) for name, item in data["units"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, UnsafePathError) as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error("unit state %s unreadable (%s); moved to %s", self.path, exc, aside)
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            return {}

    def save(self, units: dict[str, Identity]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"version": VERSION, "units": {n: i.to_json() for n, i in sorted(units.items())}},
                             indent=1)
        write_atomic(self.path, payload.encode(), mode=0o600, what="unit state")

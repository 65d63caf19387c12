"""The identities of running units, kept on disk so a restarted supervisor adopts them again.

One JSON file (format version 1): ``{"version": 1, "units": {name: Identity.to_json()}}``, written
to a temporary file, fsynced, then renamed over the old one, so a crash at any instant leaves either the
old or the new file, never half of one. A file that cannot be read is set aside as
``<file>.corrupt-<time>`` and an empty state is used: adoption is lost, supervision is not.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

from enmei.visor.base import Identity

__all__ = ["StateFile"]

log = logging.getLogger(__name__)

VERSION = 1


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Identity]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if int(data.get("version", 0)) != VERSION:
                raise ValueError(f"unknown state format {data.get('version')!r}")
            return {name: Identity.from_json(item) for name, item in data["units"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error("unit state %s unreadable (%s); moved to %s", self.path, exc, aside)
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            return {}

    def save(self, units: dict[str, Identity]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        payload = json.dumps({"version": VERSION, "units": {n: i.to_json() for n, i in sorted(units.items())}},
                             indent=1)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dirfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)

"""``enmei bench box``: how fast the journal appends durable records and verifies them.

Appends ``records`` records through ``Journal.append`` (the engine's path: canonical JSON, chained hash,
group commit with fsync), waits until all are durable, then verifies the whole chain with ``verify``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from enmei.box import Journal, verify

__all__ = ["run"]


def run(records: int = 1_000_000, workdir: Path | None = None) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="enmei-bench-box-", dir=workdir))
    try:
        path = tmp / "journal.sqlite"
        journal = Journal(path).open()
        bodies = [
            {"from": "running", "to": "exited", "reason": f"killed by SIGKILL after {i}.5s"} for i in range(100)
        ]
        t0 = time.perf_counter()
        for i in range(records):
            journal.append("unit.state", f"unit-{i % 10}", bodies[i % 100])
        journal.flush()
        append_s = time.perf_counter() - t0
        durable = journal.durable_seq
        journal.close()
        t0 = time.perf_counter()
        result = verify(path)
        verify_s = time.perf_counter() - t0
        if not result.ok or result.records != records or durable != records:
            raise RuntimeError(f"benchmark journal did not verify: {result}")
        return {
            "records": records,
            "append_per_s": round(records / append_s),
            "verify_per_s": round(records / verify_s),
            "append_s": round(append_s, 3),
            "verify_s": round(verify_s, 3),
            "journal_bytes": path.stat().st_size,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

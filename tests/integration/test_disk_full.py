"""A full disk under the journal: supervision goes on, an alert goes out, records wait in memory and are
written, in order and verified, once there is space again."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from enmei.box import store as box_store
from enmei.box import verify
from enmei.model import UnitState
from support.harness import start_rig

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, object]]:
    """A 1 MiB filesystem for the state dir (tmpfs when root). Without root (or with ENMEI_TEST_NO_MOUNT
    set, to exercise this path), SQLite's page quota gives the same SQLITE_FULL on the same code path."""
    state = tmp_path / "state"
    state.mkdir()
    if os.geteuid() == 0 and not os.environ.get("ENMEI_TEST_NO_MOUNT"):
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(state)], check=True)
        try:
            def fill() -> None:
                with open(state / "filler", "wb") as f, contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()

            def free() -> None:
                (state / "filler").unlink()

            yield state, (fill, free)
        finally:
            subprocess.run(["umount", "-l", str(state)], check=False)
    else:
        quota: dict[str, int | None] = {"pages": None}
        real_connect = box_store.connect

        def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
            conn = real_connect(path, readonly=readonly)
            if not readonly:
                conn.set_trace_callback(None)
                quota["conn"] = conn  # type: ignore[assignment]
            return conn

        monkeypatch.setattr(box_store, "connect", connect)

        def fill() -> None:
            conn = quota["conn"]
            (pages,) = conn.execute("PRAGMA page_count").fetchone()  # type: ignore[attr-defined]
            conn.execute(f"PRAGMA max_page_count = {pages}")  # type: ignore[attr-defined]

        def free() -> None:
            quota["conn"].execute("PRAGMA max_page_count = 1073741823")  # type: ignore[attr-defined]

        yield state, (fill, free)


async def test_disk_full_under_the_journal(tmp_path: Path, small_disk: tuple[Path, tuple]) -> None:  # type: ignore[type-arg]
    state, (fill, free) = small_disk
    alerts = tmp_path / "alerts.jsonl"  # on another filesystem: alerts get out while the journal cannot
    cfg = f"""
[supervisor]
state_dir = "{state}"
alert_command = ["/bin/sh", "-c", "cat >> {alerts}; echo >> {alerts}"]
[units.a]
command = ["/bin/true"]
start_s = 0.5
[units.a.restart]
budget = 100
"""
    rig = await start_rig(tmp_path, cfg)
    try:
        await rig.advance(1.0)
        assert rig.engine.units["a"].state is UnitState.RUNNING
        fill()
        for _ in range(3):  # crashes while the disk is full: each is seen and repaired
            rig.backend.crash("a", code=1)
            await rig.quiesce()
            assert rig.engine.units["a"].state is not UnitState.RUNNING
            assert await rig.advance_until(lambda: rig.engine.units["a"].state is UnitState.RUNNING, 10)
        assert rig.journal.status == "degraded"
        assert rig.journal.durable_seq < rig.journal.last_seq  # buffered, in order, not lost
        assert await rig.until(lambda: alerts.exists() and "journal cannot be written" in alerts.read_text(), 10)
        pending_last = rig.journal.last_seq
        free()
        assert await rig.until(lambda: rig.journal.durable_seq >= pending_last, 20)
        assert rig.journal.status == "ok"
        assert await rig.until(lambda: "being written again" in alerts.read_text(), 10)
    finally:
        await rig.close()
    res = verify(rig.journal.path)
    assert res.ok, res.reason
    exits = [r for r in rig.records if r[1] == "unit.event" and r[3].get("event") == "exited"]
    assert len(exits) == 3
    conn = sqlite3.connect(rig.journal.path)
    stored = {seq for (seq,) in conn.execute("SELECT seq FROM records WHERE kind = 'unit.event'")}
    conn.close()
    assert {r[0] for r in exits} <= stored  # every record made while the disk was full is there now
    lines = [json.loads(x) for x in alerts.read_text().splitlines() if x.strip()]
    assert any(x["severity"] == "critical" and "journal" in x["message"] for x in lines)

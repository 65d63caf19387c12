"""Aging in the engine (fake backend, fake time): a fast leak with the default aging keys is rejuvenated
before it reaches its limit, and the journal says how long the service was really down."""

from __future__ import annotations

from pathlib import Path

from enmei.box.verify import verify
from support.harness import start_rig

MIB = 2**20
LIMIT = 300 * MIB
BASE_RSS = 50e6  # the fake unit's rss at start (enmei.visor.fake)

# The first new-user scenario: 2 MiB/s, dead at 300 MiB. Only the limit is given (the fake
# backend has no memory_max to read); every other aging key is its default.
CONFIG = """
[units.a]
command = ["/bin/true"]
start_s = 1.0
[[units.a.probes]]
kind = "process"
interval_s = 1.0
[units.a.detect]
aging_limits = { rss_bytes = "300MiB" }
"""


async def test_a_fast_leak_is_rejuvenated_before_its_limit_with_the_real_downtime(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, CONFIG, prepare={"leak_bytes_per_s": 2.0 * MIB})
    try:
        started = rig.clock.monotonic()
        life_s = (LIMIT - BASE_RSS) / (2.0 * MIB)  # 126 s from the start to the limit

        def rejuvenated() -> bool:
            return any(b["action"] == "rejuvenate" for b in rig.bodies("remedy.outcome", "a"))

        assert await rig.advance_until(rejuvenated, life_s + 60)
        verdicts = [b for b in rig.bodies("verdict", "a") if b.get("kind") == "aging"]
        assert verdicts, rig.bodies("verdict", "a")
        ev = verdicts[0]["evidence"]
        assert ev["metric"] == "rss_bytes" and ev["rule"] == "leak"
        assert ev["value"] < LIMIT
        assert ev["exhaust_in_s"] > 10
        outcome = next(b for b in rig.bodies("remedy.outcome", "a") if b["action"] == "rejuvenate")
        assert outcome["state"] == "succeeded", outcome
        # Done before the leak would have reached the limit (the old defaults judged after 600 s + 20 min).
        assert rig.clock.monotonic() - started < life_s
        data = outcome["data"]
        # No HTTP probe, so no latency_s: the process probe's cpu_percent is the load that picks the moment.
        assert data["metric"] == "cpu_percent" and data["threshold"] is not None, data
        assert 0.0 <= data["downtime_s"] < 1.0  # start_s (1.0) is not downtime: the service runs then
        assert data["downtime_s"] == round(data["stopping_s"] + data["starting_s"], 3) or abs(
            data["downtime_s"] - data["stopping_s"] - data["starting_s"]) < 0.002
    finally:
        await rig.close()
    assert verify(rig.journal.path).ok

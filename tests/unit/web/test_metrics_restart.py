"""A supervisor started again on the same journal: its very first scrape shows every counter at least where
the last scrape of the one before left it (``rate()`` sees no reset), and counting goes on from there."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from .rig import WebRig, web_rig


async def _counters(rig: WebRig) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = await rig.client.get("/metrics")
    assert r.status_code == 200
    out = {}
    for fam in text_string_to_metric_families(r.text):
        if fam.type in ("counter", "histogram"):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_counters_continue_across_a_supervisor_restart(tmp_path: Path) -> None:
    async with web_rig(tmp_path) as first:
        await first.crash_and_recover("web")
        await first.crash_and_recover("web", code=0)
        await first.settle()
        before = await _counters(first)
    restarts = ("enmei_unit_restarts_total", (("action", "restart"), ("reason", "exit"), ("unit", "web")))
    assert before[restarts] == 2
    assert before[("enmei_unit_exits_total", (("reason", "error"), ("unit", "web")))] == 1
    assert before[("enmei_unit_exits_total", (("reason", "clean"), ("unit", "web")))] == 1
    async with web_rig(tmp_path) as second:
        after = await _counters(second)  # the first scrape of the new supervisor
        went_back = {k: (v, after.get(k)) for k, v in before.items() if after.get(k, -1.0) < v}
        assert went_back == {}
        assert after[restarts] == 2
        await second.crash_and_recover("web")
        assert (await _counters(second))[restarts] == 3

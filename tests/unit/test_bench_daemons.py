"""The summary of ``enmei bench daemons`` computed from made-up repeats (no daemon runs here)."""

from __future__ import annotations

from enmei.bench.daemons import Repeat, cell_summary, summarize
from enmei.bench.daemons_watch import Proc, main_process


def _reps(*backs: float | None, left: int = 0, error: str = "") -> list[Repeat]:
    return [Repeat(detect_s=0.1 if b is not None else None, back_s=b, failed_requests=3, leftover_processes=left,
                   error=error) for b in backs]


def _table() -> list[dict[str, object]]:
    return [
        # redis/kill: every supervisor recovers; enmei fastest
        cell_summary("redis", "kill", "enmei", _reps(0.2, 0.1, 0.3)),
        cell_summary("redis", "kill", "supervisord", _reps(2.0, 2.1, 1.9)),
        cell_summary("redis", "kill", "monit", _reps(1.5, 1.0, 1.2, left=1)),
        # postgresql/hang: supervisord never, Monit in all three but faster than enmei
        cell_summary("postgresql", "hang", "enmei", _reps(3.0, 6.0, 4.0)),
        cell_summary("postgresql", "hang", "supervisord", _reps(None, None, None)),
        cell_summary("postgresql", "hang", "monit", _reps(2.0, 2.5, 3.5)),
        # nginx/hang: no peer recovers in every repeat (Monit missed one): not compared
        cell_summary("nginx", "hang", "enmei", _reps(1.0, 1.0, None, left=2)),
        cell_summary("nginx", "hang", "supervisord", _reps(None, None, None)),
        cell_summary("nginx", "hang", "monit", _reps(12.0, None, 11.0)),
    ]


def test_cell_medians_and_recovery() -> None:
    c = cell_summary("redis", "kill", "monit", _reps(1.5, 1.0, 1.2, left=1))
    assert c["recovered"] and c["median_back_s"] == 1.2 and c["median_detect_s"] == 0.1
    assert c["back_s"] == [1.5, 1.0, 1.2] and c["leftover_processes"] == 3 and c["repeats"] == 3
    missed = cell_summary("nginx", "hang", "monit", _reps(12.0, None, 11.0))
    assert not missed["recovered"] and missed["median_back_s"] is None and missed["back_s"][1] is None
    errored = cell_summary("redis", "kill", "enmei", _reps(0.2, error="did not hold it up"))
    assert not errored["recovered"], "a repeat that could not be measured is not a recovery"
    assert errored["runs"][0]["error"] == "did not hold it up"


def test_summary_keys_and_figures() -> None:
    s = summarize(_table())
    for key in ("cells", "all_recovered", "leftover_processes", "cells_peer_recovered", "enmei_not_slower_cells",
                "postgres_hang_back_s_max"):
        assert key in s
    assert len(s["cells"]) == 9
    assert s["all_recovered"] is False  # enmei missed one nginx/hang repeat
    assert s["leftover_processes"] == 6  # enmei's: 2 in each of the three nginx/hang repeats
    assert s["leftover_processes_by_supervisor"] == {"enmei": 6, "supervisord": 0, "monit": 3}
    assert s["cells_peer_recovered"] == 2 and sorted(s["peer_recovered"]) == ["postgresql/hang", "redis/kill"]
    assert s["enmei_not_slower_cells"] == 1 and s["enmei_slower"] == ["postgresql/hang"]
    assert s["postgres_hang_back_s_max"] == 6.0
    assert s["enmei_not_slower_within_resolution_cells"] == 1 and s["resolution_s"] == 0.05
    assert s["goals_met"] == {"all_recovered": False, "not_slower": False, "not_slower_within_resolution": False,
                              "no_leftovers": False, "postgres_hang_le_5s": False}


def test_within_resolution_is_one_request_interval_and_no_more() -> None:
    """Medians 0.04 s apart are one request interval (0.05 s): not told apart; 0.06 s apart are slower."""
    cells = [cell_summary("redis", "kill", "enmei", _reps(0.54, 0.54, 0.54)),
             cell_summary("redis", "kill", "monit", _reps(0.5, 0.5, 0.5)),
             cell_summary("nginx", "kill", "enmei", _reps(0.56, 0.56, 0.56)),
             cell_summary("nginx", "kill", "monit", _reps(0.5, 0.5, 0.5))]
    s = summarize(cells)
    assert s["enmei_not_slower_cells"] == 0 and s["enmei_not_slower_within_resolution_cells"] == 1
    assert s["goals_met"]["not_slower"] is False and s["goals_met"]["not_slower_within_resolution"] is False


def test_summary_goals_met_and_ties() -> None:
    cells = [cell_summary("redis", "kill", "enmei", _reps(1.0, 1.0, 1.0)),
             cell_summary("redis", "kill", "supervisord", _reps(1.0, 1.0, 1.0)),
             cell_summary("postgresql", "hang", "enmei", _reps(2.0, 4.9, 3.0)),
             cell_summary("postgresql", "hang", "monit", _reps(None, 3.0, 3.0))]
    s = summarize(cells)
    assert s["all_recovered"] and s["leftover_processes"] == 0
    assert s["cells_peer_recovered"] == 1 and s["enmei_not_slower_cells"] == 1  # a tie is not slower
    assert s["postgres_hang_back_s_max"] == 4.9
    assert all(s["goals_met"].values())


def test_postgres_hang_max_is_none_when_a_repeat_did_not_recover() -> None:
    s = summarize([cell_summary("postgresql", "hang", "enmei", _reps(2.0, None, 3.0))])
    assert s["postgres_hang_back_s_max"] is None and not s["goals_met"]["postgres_hang_le_5s"]


def test_main_process_is_the_oldest_whose_parent_is_not_the_daemons() -> None:
    procs = {p.pid: p for p in (Proc(10, 500, 1, "nginx", "S"), Proc(11, 501, 10, "nginx", "S"),
                                Proc(12, 502, 10, "nginx", "S"), Proc(20, 400, 1, "run-nginx", "S"))}
    main = main_process(procs, "nginx")
    assert main is not None and main.pid == 10
    # the master killed: its orphaned workers (parent now 1) are candidates; the oldest is taken
    orphans = {p.pid: Proc(p.pid, p.start, 1, p.comm, p.state) for p in procs.values() if p.pid in (11, 12)}
    main = main_process(orphans, "nginx")
    assert main is not None and main.pid == 11
    assert main_process({}, "nginx") is None

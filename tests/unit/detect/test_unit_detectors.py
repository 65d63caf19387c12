"""Unit detectors: the registry, ``[[units.NAME.detectors]]`` config, the defaults, health, text."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from enmei.clock import FakeClock
from enmei.config.load import check, load_text
from enmei.detect import registry
from enmei.detect.aging_keys import default_limits
from enmei.detect.aging_unit import AgingDetector
from enmei.detect.failures import ProbeFailureDetector, ProbeFailureOptions
from enmei.detect.judges import LatencyChartsDetector
from enmei.detect.latency import LatencyDetector, LatencyStream
from enmei.detect.latency_keys import ALPHA as LATENCY_ALPHA
from enmei.detect.latency_keys import LEARNING as LATENCY_LEARNING
from enmei.detect.logmatch import LogPatternDetector, LogPatternOptions
from enmei.detect.metric import scorer
from enmei.detect.pipeline import UnitJudge
from enmei.detect.protocol import DetectorContext, HealthReport, Judgement, Limit
from enmei.detect.reaction import ReactionDetector
from enmei.detect.unitset import UnitDetectors
from enmei.detect.wiring import unit_detectors
from enmei.model import Health, Observation, VerdictKind
from enmei.monitor.lograte import LogProbe

WEB = """
[units.web]
command = ["/bin/true"]
[[units.web.probes]]
kind = "http"
url = "http://127.0.0.1:9/health"
fail_after = 2
[[units.web.probes]]
kind = "process"
[units.web.detect]
aging_limits = { rss_bytes = "64MiB" }
"""


def obs(probe: str, ok: bool, t: float, values: dict[str, float] | None = None, error: str | None = None,
        lines: tuple[str, ...] = ()) -> Observation:
    return Observation("web", probe, ok, t, 1e9 + t, values or {}, error, lines)


def detectors_of(tmp_path: Path, text: str, unit: str = "web") -> UnitDetectors:
    loaded = load_text(text, tmp_path / "enmei.toml")
    return unit_detectors(unit, loaded.config.units[unit])


# -- the defaults: what enmei did before detectors were pluggable -------------------------------------

def test_a_unit_that_configures_none_gets_the_old_set(tmp_path: Path) -> None:
    dets = detectors_of(tmp_path, WEB)
    assert [(d.kind, d.name) for d in dets] == [("probe_failures", "probe_failures"), ("latency", "latency"),
                                                 ("aging", "aging")]
    pf = dets.get("probe_failures")
    assert isinstance(pf, ProbeFailureDetector)
    assert {p: t.fail_after for p, t in pf.trackers.items()} == {"http": 2}  # passive probes cannot fail
    aging = dets.get("aging")
    assert isinstance(aging, AgingDetector) and aging.aging_limits == {"rss_bytes": 64 * 2**20}


def test_nothing_to_judge_gives_an_empty_set(tmp_path: Path) -> None:
    text = '[units.a]\ncommand = ["/bin/true"]\n[[units.a.probes]]\nkind = "process"\n'
    assert len(detectors_of(tmp_path, text + '[units.a.detect]\naging = false\n', "a")) == 0
    assert len(detectors_of(tmp_path, '[units.a]\ncommand = ["/bin/true"]\n', "a")) == 0
    off = WEB.replace("[units.web.detect]\naging_limits", "[units.web.detect]\nlatency = false\naging_limits")
    assert [d.kind for d in detectors_of(tmp_path, off)] == ["probe_failures", "aging"]


def test_an_entry_replaces_the_default_of_its_kind_and_others_add(tmp_path: Path) -> None:
    text = WEB + """
[[units.web.detectors]]
kind = "probe_failures"
fail_after = 5
[[units.web.detectors]]
kind = "log_pattern"
pattern = "Traceback"
"""
    dets = detectors_of(tmp_path, text)
    assert [d.kind for d in dets] == ["latency", "aging", "probe_failures", "log_pattern"]
    pf = dets.get("probe_failures")
    assert isinstance(pf, ProbeFailureDetector) and pf.trackers["http"].fail_after == 5


def test_a_unit_with_a_process_probe_gets_aging_up_to_what_it_can_reach(tmp_path: Path) -> None:
    """Issue 13 item 6: no aging_limits is not 'no aging' — the limits are what the unit can reach."""
    text = '[units.a]\ncommand = ["/bin/true"]\n[[units.a.probes]]\nkind = "process"\n'
    aging = detectors_of(tmp_path, text, "a").get("aging")
    assert isinstance(aging, AgingDetector)
    assert aging.aging_limits == default_limits(None)
    assert aging.aging_limits["rss_bytes"] > 2**20  # the machine's memory here: no memory_max
    assert default_limits(300 * 2**20, nofile=64.0) == {"rss_bytes": 300 * 2**20, "num_fds": 64.0}
    caged = detectors_of(tmp_path, text.replace('"/bin/true"]\n', '"/bin/true"]\nmemory_max = "300MiB"\n', 1),
                         "a").get("aging")
    assert isinstance(caged, AgingDetector)
    assert caged.aging_limits["rss_bytes"] == 300 * 2**20  # what the unit can really reach


def test_default_verdicts(tmp_path: Path) -> None:
    """The default latency detector is the benchmarked scorer on each probe's log latency (one path:
    its stream scores exactly as a LatencyStream, i.e. ``scorer``, fed the same values); the aging one
    gives an AGING verdict with its evidence, before the limit."""
    dets = detectors_of(tmp_path, WEB.replace('aging_limits = { rss_bytes = "64MiB" }',
                                              'aging_limits = { rss_bytes = "64MiB" }\nlatency_learning = 40\n'
                                              'aging_bucket_s = 1\naging_min_buckets = 8\naging_warmup_s = 0'))
    lat_det = dets.get("latency")
    assert isinstance(lat_det, LatencyDetector) and lat_det.opts.learning == 40
    assert lat_det.level == scorer(40).level_for(LATENCY_ALPHA)
    same = LatencyStream(learning=40)
    rng = random.Random(3)
    new_v = []
    alarmed: list[float] = []
    for i in range(300):
        t = float(i)
        latency = 0.01 * math.exp(rng.gauss(0, 0.1)) * (6 if i > 150 else 1)
        lat = obs("http", True, t, {"latency_s": latency})
        rss = obs("proc", True, t, {"rss_bytes": 1e6 + 2e5 * i})
        for o in (lat, rss):
            new_v += dets.feed(o).verdicts
        if same.update(latency, t) >= lat_det.level:
            alarmed.append(t)
    assert lat_det.streams["http"].state() == same.state()
    anomalies = [v for v in new_v if v.kind is VerdictKind.ANOMALY]
    assert anomalies and anomalies[0].mono == alarmed[0] > 150 and anomalies[0].evidence["suspect"] == "http"
    assert anomalies[0].detector == "latency:latency_s" and anomalies[0].evidence["repeat"] is False
    aging = [v for v in new_v if v.kind is VerdictKind.AGING]
    assert aging
    ev = aging[0].evidence
    assert ev["metric"] == "rss_bytes" and ev["rule"] == "leak"
    assert ev["value"] < 64 * 2**20
    assert ev["slope_per_s"] == pytest.approx(2e5, rel=0.05)
    assert 0 < ev["exhaust_in_s"] < (64 * 2**20 - ev["value"]) / 2e5 * 1.2


# -- config: errors name file, key and line --------------------------------------------------------

def test_aging_limits_with_an_unknown_key_or_a_bad_size_name_file_line_and_key(tmp_path: Path) -> None:
    """Issue 13: `aging_limits = { rss = "250MiB" }` (a typo) passed `enmei check` silently."""
    path = tmp_path / "enmei.toml"
    base = '[units.a]\ncommand = ["/bin/true"]\n[[units.a.probes]]\nkind = "process"\n[units.a.detect]\n'
    path.write_text(base + 'aging_limits = { rss = "250MiB" }\n')
    [p] = check(path)
    assert (p.line, p.key) == (6, "units.a.detect.aging_limits.rss")
    assert "unknown key 'rss'" in p.message and "rss_bytes" in p.message
    path.write_text(base + 'aging_limits = { rss_bytes = "250XB", num_fds = "many" }\n')
    assert {(p.line, p.key) for p in check(path)} == {(6, "units.a.detect.aging_limits.rss_bytes"),
                                                     (6, "units.a.detect.aging_limits.num_fds")}
    path.write_text(base.replace("[units.a.detect]\n", "") + '[[units.a.detectors]]\nkind = "aging"\n'
                    'limits = { rss = "250MiB" }\n')
    [p] = check(path)
    assert (p.line, p.key) == (7, "units.a.detectors[0].limits.rss")
    assert p.message.endswith("allowed here: num_fds, num_threads, qemu_fds, qemu_private_bytes, qemu_threads, "
                              "rss_bytes, vms_bytes"), p.message
    path.write_text(base + 'aging_limits = { rss_bytes = "250MiB", num_fds = 512 }\n')
    assert check(path) == []
    aging = detectors_of(tmp_path, path.read_text(), "a").get("aging")
    assert isinstance(aging, AgingDetector)
    assert aging.aging_limits == {"rss_bytes": 250 * 2**20, "num_fds": 512.0}


def test_min_buckets_that_can_never_fire_is_refused_with_the_reason(tmp_path: Path) -> None:
    """Issue 13: aging_min_buckets = 6 could never fire (a hidden p < 1e-3) and nothing said so."""
    path = tmp_path / "enmei.toml"
    base = '[units.a]\ncommand = ["/bin/true"]\n[[units.a.probes]]\nkind = "process"\n[units.a.detect]\n'
    path.write_text(base + "aging_min_buckets = 6\n")
    [p] = check(path)
    assert (p.line, p.key) == (6, "units.a.detect.aging_min_buckets")
    assert "can never fire at aging_alpha = 0.001" in p.message and "aging_min_buckets >= 8" in p.message
    path.write_text(base + "aging_alpha = 0.005\naging_min_buckets = 6\n")
    assert check(path) == []
    path.write_text(base + '[[units.a.detectors]]\nkind = "aging"\nmin_buckets = 6\n')
    [p] = check(path)
    assert p.key.startswith("units.a.detectors[0]") and "min_buckets = 6 can never fire" in p.message


def test_bad_entries_name_file_key_and_line(tmp_path: Path) -> None:
    path = tmp_path / "enmei.toml"
    path.write_text(WEB + """
[[units.web.detectors]]
kind = "log_patern"

[[units.web.detectors]]
kind = "log_pattern"
patern = "x"

[[units.web.detectors]]
kind = "latency"
alpha = 7

[[units.web.detectors]]
pattern = "x"
""")
    found = [(p.line, p.key, p.message) for p in check(path)]
    first = WEB.count("\n") + 2  # the line of the first [[units.web.detectors]]
    assert found[0] == (first + 1, "units.web.detectors[0].kind",
                        "no detector kind 'log_patern' (did you mean 'log_pattern'?)")
    assert (first + 3, "units.web.detectors[1].pattern",
            "missing required key 'pattern' for a log_pattern detector") in found
    assert (first + 5, "units.web.detectors[1].patern",
            "unknown key 'patern' for a log_pattern detector (did you mean 'pattern'?)") in found
    assert any(line == first + 9 and key == "units.web.detectors[2].alpha" and "less than 0.5" in msg
               for line, key, msg in found)
    assert any(key == "units.web.detectors[3].kind" and msg.startswith("missing required key 'kind'")
               for _, key, msg in found)
    assert str(path) in str(check(path)[0])


def test_two_detectors_of_one_name_and_a_bad_pattern_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "enmei.toml"
    path.write_text(WEB + """
[[units.web.detectors]]
kind = "log_pattern"
pattern = "a"
[[units.web.detectors]]
kind = "log_pattern"
pattern = "(unclosed"
[[units.web.detectors]]
kind = "log_pattern"
pattern = "b"
""")
    msgs = {p.key: p.message for p in check(path)}
    assert msgs["units.web.detectors[1].pattern"].startswith("not a regular expression")
    assert "two detectors are named 'log_pattern'" in msgs["units.web.detectors[2].name"]


def test_register_refuses_a_duplicate_kind() -> None:
    with pytest.raises(ValueError, match="already registered"):
        registry.register("latency", LogPatternOptions, lambda ctx, o: LogPatternDetector(ctx.unit, o))
    assert {"probe_failures", "latency", "aging", "reaction", "log_pattern"} <= set(registry.kinds())


# -- health: the detectors decide it, combined over sources ----------------------------------------

def test_health_from_probe_failures_as_the_engine_applied_it() -> None:
    pf = ProbeFailureDetector("web", {"http": 2, "tcp": 2})
    dets = UnitDetectors("web", [pf])
    seen = [dets.feed(o).health for o in (
        obs("http", True, 0), obs("http", False, 1, error="refused"), obs("http", False, 2, error="refused"),
        obs("tcp", True, 3), obs("http", True, 4))]
    assert [h[0] if h else None for h in seen] == [Health.OK, Health.DEGRADED, Health.FAILING, None, Health.OK]
    assert seen[2] == (Health.FAILING, "probe http: refused")
    v = [dets.feed(o).verdicts for o in (obs("http", False, 5), obs("http", False, 6), obs("http", True, 7))]
    assert [x[0].kind for x in v if x] == [VerdictKind.PROBE_FAILED, VerdictKind.PROBE_RECOVERED]


def test_ok_from_one_source_does_not_hide_another_failing_one() -> None:
    class Says:
        kind = "says"

        def __init__(self, name: str, source: str) -> None:
            self.name, self.source = name, source

        def feed(self, o: Observation) -> Judgement:
            if o.probe != self.source:
                return Judgement()
            h = Health.OK if o.ok else Health.FAILING
            return Judgement((), (HealthReport(self.source, h, f"{self.source} {h}"),))

        def reset(self) -> None:
            pass

        def state(self) -> dict[str, object]:
            return {}

        def limits(self) -> dict[str, Limit]:
            return {}

    dets = UnitDetectors("web", [Says("a", "x"), Says("b", "y")])
    assert dets.feed(obs("x", False, 0)).health == (Health.FAILING, "x failing")
    assert dets.feed(obs("y", True, 1)).health is None  # x still fails
    assert dets.feed(obs("x", True, 2)).health == (Health.OK, "x ok")
    dets.feed(obs("x", False, 3))
    dets.reset()
    assert dets.feed(obs("y", True, 4)).health == (Health.OK, "y ok")


def test_a_broken_detector_is_counted_and_the_others_still_judge() -> None:
    class Broken(LogPatternDetector):
        def feed(self, o: Observation) -> Judgement:
            raise RuntimeError("bug")

    good = ProbeFailureDetector("web", {"http": 1})
    dets = UnitDetectors("web", [Broken("web", LogPatternOptions(kind="log_pattern", pattern="x")), good])
    judged = dets.feed(obs("http", False, 0, error="down"))
    assert judged.verdicts[0].kind is VerdictKind.PROBE_FAILED
    assert judged.failed == (("log_pattern", "RuntimeError: bug"),)
    assert dets.state()["errors"] == {"log_pattern": 1}


# -- injectors observe, the reaction detector judges ------------------------------------------------

def test_keys_reaction_is_judged_by_the_reaction_detector(tmp_path: Path) -> None:
    text = """
[units.vm]
backend = "qemu"
[[units.vm.injectors]]
kind = "keys"
name = "typing"
text = "hello"
max_reaction = 4096
"""
    dets = detectors_of(tmp_path, text, "vm")
    assert [d.kind for d in dets] == ["probe_failures", "reaction"]
    r = dets.get("reaction:typing")
    assert isinstance(r, ReactionDetector) and r.metric == "reaction_wr_bytes" and r.max_reaction == 4096

    def inj(ok: bool, moved: float, t: float) -> Observation:
        return Observation("vm", "typing", ok, t, t, {"reaction_wr_bytes": moved} if ok else {},
                           None if ok else "no keyboard")

    out = [dets.feed(o) for o in (inj(True, 0, 0), inj(True, 8192, 1), inj(True, 9000, 2), inj(True, 0, 3),
                                   inj(False, 0, 4))]
    assert [[v.kind for v in j.verdicts] for j in out] == [
        [], [VerdictKind.PROBE_FAILED], [], [VerdictKind.PROBE_RECOVERED], [VerdictKind.PROBE_FAILED]]
    assert out[1].verdicts[0].evidence["value"] == 8192 and out[1].verdicts[0].evidence["limit"] == 4096
    assert [j.health[0] if j.health else None for j in out] == [Health.OK, Health.FAILING, Health.FAILING,
                                                                 Health.OK, Health.FAILING]
    assert out[1].health == (Health.FAILING, "reaction_wr_bytes moved by 8192 after injection typing (bound 4096)")
    assert out[4].verdicts[0].detector == "probe-failures:typing"  # the injection itself failed


def test_a_reaction_entry_must_name_an_injector_of_the_unit() -> None:
    opts = registry.get("reaction").options.model_validate({"kind": "reaction", "injector": "nope"})
    with pytest.raises(ValueError, match="names injector 'nope'"):
        registry.build(DetectorContext("vm"), opts)


# -- the text channel ------------------------------------------------------------------------------

async def test_log_probe_lines_feed_a_log_pattern_detector(tmp_path: Path) -> None:
    """The log probe reads a real file; its lines reach the detector through Observation.lines."""
    log = tmp_path / "web.stderr.log"
    log.write_text("old line: Traceback before the probe started\n")
    clock = FakeClock()
    probe = LogProbe("web", "log", 1.0, clock, path=log, pattern=None, max_lines=3, max_line=40)
    det = LogPatternDetector("web", LogPatternOptions(kind="log_pattern", pattern="Traceback", count=2,
                                                      window_s=10, hold_off_s=100, probe="log"))
    first = await probe.observe()
    assert first.lines == () and det.feed(first) == Judgement()  # what was there before is not news
    with log.open("a") as f:
        f.write("ok\nTraceback (most recent call last):\n  File \"x\", line 1\nValueError: " + "é" * 50)
    clock.advance(1.0)
    second = await probe.observe()
    assert second.lines == ("ok", "Traceback (most recent call last):", '  File "x", line 1')
    assert det.feed(second) == Judgement()  # one match of the two it needs
    with log.open("a") as f:
        f.write("\nTraceback again\n" + "".join(f"filler {i}\n" for i in range(5)))
    clock.advance(1.0)
    third = await probe.observe()
    assert third.lines[0].startswith("ValueError: é") and len(third.lines[0].encode()) <= 40 + 3
    assert third.lines[1] == "Traceback again" and len(third.lines) == 3 and third.values["text_dropped"] == 4
    verdicts = det.feed(third).verdicts
    assert [v.kind for v in verdicts] == [VerdictKind.LOG_ANOMALY]
    assert verdicts[0].evidence["matches"] == 2
    assert verdicts[0].evidence["lines"] == ["Traceback (most recent call last):", "Traceback again"]
    clock.advance(1.0)
    assert det.feed(obs("log", True, clock.monotonic(), lines=("Traceback 3", "Traceback 4"))) == Judgement()
    det.reset()
    assert det.feed(obs("log", True, clock.monotonic(), lines=("Traceback 5", "Traceback 6"))).verdicts


def test_the_control_charts_are_a_kind_of_their_own_giving_the_judges_verdicts(tmp_path: Path) -> None:
    """``latency_charts`` (the latency default before round 6) gives exactly the verdicts of the
    UnitJudge it wraps; named ``latency`` it replaces the default."""
    dets = detectors_of(tmp_path, WEB + '[[units.web.detectors]]\nkind = "latency_charts"\nname = "latency"\n'
                        'learning = 40\n')
    charts = dets.get("latency")
    assert isinstance(charts, LatencyChartsDetector) and [d.kind for d in dets].count("latency") == 0
    old = UnitJudge("web", learning=40, hold_off_s=300.0)
    rng = random.Random(3)
    new_v, old_v = [], []
    for i in range(300):
        lat = obs("http", True, float(i), {"latency_s": 0.01 * math.exp(rng.gauss(0, 0.1)) * (6 if i > 150 else 1)})
        new_v += [v for v in dets.feed(lat).verdicts if v.kind is VerdictKind.ANOMALY]
        old_v += old.feed(lat)
    assert new_v == old_v and {v.kind for v in old_v} == {VerdictKind.ANOMALY}


def test_probe_failure_options_default_to_each_probes_own(tmp_path: Path) -> None:
    assert ProbeFailureOptions(kind="probe_failures").fail_after is None
    dets = detectors_of(tmp_path, WEB)
    lat = dets.get("latency")
    assert isinstance(lat, LatencyDetector) and lat.opts.learning == LATENCY_LEARNING and lat.limits() == {}


def test_an_entry_that_does_not_fit_its_unit_is_a_config_error_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "enmei.toml"
    path.write_text(WEB + """
[[units.web.detectors]]
kind = "reaction"
injector = "typing"
""")
    (problem,) = check(path)
    assert problem.key == "units.web.detectors[0]" and problem.line == WEB.count("\n") + 2
    assert "names injector 'typing', which this unit lacks (injectors: none)" in problem.message


async def test_a_vm_console_feeds_the_text_channel(tmp_path: Path) -> None:
    """A QEMU unit's serial console is a log stream: its lines reach a log_pattern detector (no QEMU
    runs here: the lines are written where the backend says its guest's console goes)."""
    from enmei.monitor import make_probes
    from enmei.visor.qemu import QemuBackend

    loaded = load_text("""
[units.vm]
backend = "qemu"
[[units.vm.probes]]
kind = "log"
name = "console"
stream = "console"
interval_s = 1
[[units.vm.detectors]]
kind = "log_pattern"
pattern = "BUG: |Oops"
probe = "console"
""", tmp_path / "enmei.toml")
    spec = loaded.config.units["vm"]
    clock = FakeClock()
    backend = QemuBackend(clock=clock, state_dir=tmp_path / "state", emit=lambda ev: None)
    try:
        (probe,) = make_probes("vm", spec, backend, clock)
        console = backend.log_path("vm", "console")
        assert isinstance(probe, LogProbe) and console is not None and probe.path == console
        console.parent.mkdir(parents=True, exist_ok=True)
        console.write_text("enmei-phase: kernel\n")
        dets = unit_detectors("vm", spec)
        assert dets.feed(await probe.observe()).verdicts == ()
        with console.open("a") as f:
            f.write("[    2.5] BUG: unable to handle page fault for address: 0000000000000008\n")
        clock.advance(1.0)
        seen = await probe.observe()
        assert seen.lines == ("[    2.5] BUG: unable to handle page fault for address: 0000000000000008",)
        (verdict,) = dets.feed(seen).verdicts
        assert verdict.kind is VerdictKind.LOG_ANOMALY and verdict.unit == "vm"
    finally:
        await backend.close()


def test_a_reaction_entry_replaces_only_its_injectors_default(tmp_path: Path) -> None:
    text = """
[units.vm]
backend = "qemu"
[[units.vm.injectors]]
kind = "keys"
name = "typing"
text = "hello"
max_reaction = 4096
[[units.vm.injectors]]
kind = "keys"
name = "login"
text = "root"
max_reaction = 100
[[units.vm.detectors]]
kind = "reaction"
injector = "typing"
max_reaction = 10
"""
    dets = detectors_of(tmp_path, text, "vm")
    assert [d.name for d in dets] == ["probe_failures", "reaction:login", "reaction:typing"]
    typing, login = dets.get("reaction:typing"), dets.get("reaction:login")
    assert isinstance(typing, ReactionDetector) and typing.max_reaction == 10
    assert isinstance(login, ReactionDetector) and login.max_reaction == 100

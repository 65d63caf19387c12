"""The shape of ``enmei.toml``: frozen pydantic models, every key with its unit in its name.

A config file looks like this (every key but ``command`` has a default)::

    [supervisor]
    state_dir = ".enmei"            # journal, unit state and logs; relative to the config file

    [units.web]
    backend = "process"
    command = ["python3", "-m", "http.server", "8080", "--bind", "127.0.0.1"]
    listen = ["127.0.0.1:8080"]     # checked free before start: a clear error instead of a crash loop

    [[units.web.probes]]
    kind = "http"
    url = "http://127.0.0.1:8080/"
    interval_s = 1.0

Unknown keys are errors (``extra="forbid"``): a typo never becomes a silent default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self, Union, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from enmei.detect.aging_keys import DEFAULTS as AGING
from enmei.detect.aging_keys import AgingLimits, min_buckets_problem
from enmei.detect.latency_keys import ALPHA as LATENCY_ALPHA
from enmei.detect.latency_keys import LEARNING as LATENCY_LEARNING
from enmei.detect.protocol import DetectorContext, InjectorInfo, ProbeInfo
from enmei.detect.registry import DetectorOptions, check_fits, validate_entries
from enmei.visor.identity import parse_umask

__all__ = [
    "Config",
    "CrossviewProbe",
    "DegradeMode",
    "EscalateConfig",
    "ExecProbe",
    "HeldSocket",
    "HttpInjector",
    "HttpProbe",
    "InjectorConfig",
    "KeysInjector",
    "LogConfig",
    "LogProbe",
    "ProbeConfig",
    "ProcessProbe",
    "ProcessUnit",
    "RejuvenateConfig",
    "RestartConfig",
    "SupervisorConfig",
    "TcpProbe",
    "TypingScheduleInjector",
    "UnitBase",
    "UnitConfig",
    "config_model",
    "dependency_cycle",
    "probe_name",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")



class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SupervisorConfig(_Model):
    """``[supervisor]``: where enmei keeps its state, and how it keeps its journal."""

    state_dir: str = ".enmei"
    journal: str = "journal.sqlite"
    # HMAC key for the journal's anchors; keep it where whoever could tamper with the journal cannot
    # write (relative to the config file; default: anchor.key in state_dir). anchors = false: none.
    anchor_key: str | None = None
    anchors: bool = True
    # A file (relative to the config file) on another volume or host mount, rewritten with the journal's
    # head: it lets start-up and ``box verify --witness`` see a journal and head rolled back together.
    witness: str | None = None
    policy: str | None = None  # a Starlark policy file; None = the shipped default library
    samples_retention_s: float = Field(default=86_400.0, gt=0)
    summary_every_s: float = Field(default=60.0, gt=0)
    alert_command: list[str] | None = None  # run for every alert, the alert as JSON on stdin
    tick_s: float = Field(default=1.0, gt=0, le=60)
    # This supervisor's name in a shared journal (one hash chain each) and in the fleet's host leases;
    # default: the machine's hostname. Two supervisors sharing a database need different names.
    host: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

    @field_validator("journal")
    @classmethod
    def _journal(cls, value: str) -> str:
        # A file inside state_dir, or a PostgreSQL database (``postgresql://USER@HOST:PORT/DB``); the
        # check is the stdlib's, so loading a config never imports psycopg.
        if value.startswith(("postgresql:", "postgres:")):
            from enmei.box.pgdb import check_dsn

            return check_dsn(value)
        if not value or "\x00" in value:
            raise ValueError("the journal is a file name (inside state_dir) or a postgresql:// URL")
        return value


class FleetConfig(_Model):
    """``[fleet]``: this supervisor as a host of a fleet sharing one PostgreSQL database (``enmei.fleet``):
    it registers its host, holds a host lease and competes for the fleet's leader lease."""

    # postgresql:// URL of the fleet's database; default: [supervisor] journal, when that is one
    database: str | None = None
    lease_ttl_s: float = Field(default=5.0, gt=0.5, le=120)

    @field_validator("database")
    @classmethod
    def _database(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from enmei.box.pgdb import check_dsn

        return check_dsn(value)


class LogConfig(_Model):
    """``[units.NAME.log]``: captured stdout/stderr, rotated by size (at most ``max_bytes * (keep + 1)``
    per stream); output past ``max_bytes_per_s`` is dropped and counted (a journaled flood episode)."""

    max_bytes: ByteSize = Field(default=ByteSize(10 * 2**20), gt=1024)
    keep: int = Field(default=3, ge=0, le=100)
    max_bytes_per_s: ByteSize = Field(default=ByteSize(8 * 2**20), ge=1024)


class RestartConfig(_Model):
    """``[units.NAME.restart]``: exponential backoff, reset after a healthy period, and a budget per window.

    Backoff (what the shipped policy and the built-in one wait before a restart, ``next_delay_s`` in the
    view and the API), by the cause of the restart:

    * **A crash** (the unit exited, or its start failed). An instance that had been ``running`` for at
      least ``reset_after_s`` proved itself: its crash is restarted at once, and the retry streak starts
      over. A crash of an instance that ran less (it died during its start, or soon after) is a *retry*:
      the n-th retry in a row starts no sooner than ``min(backoff_max_s, backoff_first_s *
      backoff_factor**(n-1))`` after the start it retries (the first: ``backoff_first_s``), so it waits
      that step less the time the crashed instance lived. The backoff bounds the rate of starts: a
      daemon that dies at once waits the whole step; one that worked for a while, or was killed seconds
      into a slow start, is restarted at once.
    * **A failed liveness probe** (the unit is up, but does not answer): the probe's ``fail_after``
      failures were the wait, so the first probe-caused restart after a healthy period waits nothing,
      the n-th in a row ``min(backoff_max_s, backoff_first_s * backoff_factor**(n-2))``. Probe-caused
      restarts never grow the crash streak, nor crashes the probe streak.

    Both streaks start over once the unit has been ``running`` for ``reset_after_s`` (and on
    ``enmei ctl reset``). Every restart, whatever its cause, counts in ``budget`` per ``window_s``: when it is
    spent, the unit is escalated (see ``EscalateConfig``): never a tight loop, never a silent give-up.
    """

    backoff_first_s: float = Field(default=0.5, ge=0)
    backoff_factor: float = Field(default=2.0, ge=1)
    backoff_max_s: float = Field(default=30.0, ge=0)
    reset_after_s: float = Field(default=10.0, gt=0)  # running this long resets the backoff
    budget: int = Field(default=5, ge=1)
    window_s: float = Field(default=300.0, gt=0)
    deadline_s: float = Field(default=60.0, gt=0)  # a restart that takes longer has TIMED_OUT


class EscalateConfig(_Model):
    """``[units.NAME.escalate]``: what happens once the restart budget is spent, or the unit flaps.

    ``retry_every_s``: the slow retries of an escalated unit (an alert, then one start every so often).
    The shipped policy's circuit breaker (``flapping``): ``breaker_failures`` failures (exits, failed
    starts and repairs) within ``breaker_within_s`` open it; while it is open the unit is escalated and
    its next try waits ``max(breaker_open_s, retry_every_s)``; a failure within ``breaker_open_s +
    breaker_within_s`` of opening keeps it open. ``enmei ctl reset`` closes it (failures before the
    reset are not counted again).
    """

    retry_every_s: float = Field(default=60.0, gt=0)  # the slower retries
    alert: bool = True
    breaker_failures: int = Field(default=4, ge=1)
    breaker_within_s: float = Field(default=120.0, gt=0)
    breaker_open_s: float = Field(default=300.0, ge=0)


class RejuvenateConfig(_Model):
    """``[units.NAME.rejuvenate]``: planned graceful restarts at a low-load moment.

    Every ``every_s`` (if set), or when asked by a decision, enmei watches the unit's load for up to
    ``window_s`` and restarts it at the quietest moment seen (the lowest ``load_metric`` of the window,
    judged against the recent distribution), or at the end of the window at the latest.
    """

    every_s: float | None = Field(default=None, gt=0)
    window_s: float = Field(default=60.0, ge=0)
    load_metric: str = "latency_s"
    quiet_quantile: float = Field(default=0.2, gt=0, lt=1)


class DetectConfig(_Model):
    """``[units.NAME.detect]``: the options of the default ``latency`` and ``aging`` detectors.

    They apply when no ``[[units.NAME.detectors]]`` entry replaces that default (an entry replaces the
    default of its name, by default its kind: see ``enmei.detect.wiring``).

    Latency: per HTTP probe, the benchmarked scorer on the log latency, one-sided (``enmei.detect.latency``),
    after a learning phase of ``latency_learning`` samples; a verdict at a nominal false-alarm probability
    ``latency_alpha`` per sample; then that probe's hold-off ``latency_hold_off_s``. (The control charts
    this ran before round 6 are the detector kind ``latency_charts``.)

    Aging (``aging``, on for every unit with a ``process`` probe): the floor of each resource of
    ``aging_limits`` (default: ``rss_bytes`` up to the unit's ``memory_max``, else the machine's memory;
    ``num_fds`` up to the open-files limit) in ``aging_bucket_s`` buckets at several time scales
    (``aging_window`` buckets each), judged from ``aging_min_buckets`` buckets on, ignoring the first
    ``aging_warmup_s``. A verdict needs a Mann–Kendall trend at significance ``aging_alpha`` that is not
    slowing down (the recent half's slope at least ``aging_slope_ratio`` of the early half's) and a predicted
    exhaustion within ``aging_urgency`` times the length of the evidence and within ``aging_horizon_s``.
    See :mod:`enmei.detect.aging`.
    """

    latency: bool = True
    latency_learning: int = Field(default=LATENCY_LEARNING, ge=10)
    latency_alpha: float = Field(default=LATENCY_ALPHA, gt=0, lt=0.5)
    latency_hold_off_s: float = Field(default=300.0, ge=0)
    aging: bool = True
    aging_limits: AgingLimits | None = None
    aging_bucket_s: float = Field(default=AGING["bucket_s"], gt=0)
    aging_alpha: float = Field(default=AGING["alpha"], gt=0, lt=0.5)
    aging_window: int = Field(default=int(AGING["window"]), ge=6, le=120)
    aging_min_buckets: int = Field(default=int(AGING["min_buckets"]), ge=4, le=120)
    aging_warmup_s: float = Field(default=AGING["warmup_s"], ge=0)
    aging_horizon_s: float = Field(default=AGING["horizon_s"], gt=0)
    aging_urgency: float = Field(default=AGING["urgency"], gt=0)
    aging_slope_ratio: float = Field(default=AGING["slope_ratio"], ge=0, le=1)
    aging_hold_off_s: float = Field(default=AGING["hold_off_s"], ge=0)

    @field_validator("aging_min_buckets")
    @classmethod
    def _can_fire(cls, v: int, info: ValidationInfo) -> int:
        alpha = info.data.get("aging_alpha")
        problem = None if alpha is None else min_buckets_problem(v, alpha)
        if problem is not None:
            raise ValueError(problem)
        return v


ProbeRole = Literal["liveness", "readiness"]


class HttpProbe(_Model):
    kind: Literal["http"]
    name: str | None = None
    url: str
    interval_s: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=1.0, gt=0)
    expect_status: list[int] = Field(default_factory=lambda: [200])
    fail_after: int = Field(default=3, ge=1)  # consecutive failures before a verdict
    # liveness: failures are a probe_failed verdict (a restart); readiness: failures only make the unit
    # DEGRADED (no verdict, no restart), passes make it OK again.
    role: ProbeRole = "liveness"

    @field_validator("url")
    @classmethod
    def _loopback(cls, url: str) -> str:
        m = re.match(r"^http://(\[[^\]]+\]|[^/:]+)(:\d+)?(/.*)?$", url)
        if not m:
            raise ValueError(f"{url!r} is not an http:// URL")
        host = m.group(1).strip("[]")
        if not _is_loopback(host):
            raise ValueError(f"{url!r}: enmei probes loopback only (127.0.0.0/8, ::1, localhost)")
        return url


class TcpProbe(_Model):
    """A connection to ``host:port`` opens within ``timeout_s``; with ``send`` and/or ``expect`` (or
    ``expect_regex``), a protocol check on it: ``send`` is written, and the answer must start with
    ``expect`` (or match ``expect_regex``) within the same ``timeout_s`` (at most ``max_read_bytes``
    read). Strings are sent as UTF-8 (TOML escapes: ``"PING\r\n"``). Redis: ``send = "PING\r\n"``,
    ``expect = "+PONG"``."""

    kind: Literal["tcp"]
    name: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    interval_s: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=1.0, gt=0)
    fail_after: int = Field(default=3, ge=1)
    send: str | None = None
    # liveness: failures are a probe_failed verdict (a restart); readiness: failures only make the unit
    # DEGRADED (no verdict, no restart), passes make it OK again.
    role: ProbeRole = "liveness"
    expect: str | None = None
    expect_regex: str | None = None
    max_read_bytes: int = Field(default=4096, ge=1, le=1 << 20)

    @field_validator("expect_regex")
    @classmethod
    def _regex(cls, pattern: str | None) -> str | None:
        return _check_regex(pattern)

    @model_validator(mode="after")
    def _one_expectation(self) -> TcpProbe:
        if self.expect is not None and self.expect_regex is not None:
            raise ValueError("give at most one of 'expect' or 'expect_regex'")
        if self.expect == "":
            raise ValueError("'expect' is empty: leave it out to expect nothing")
        return self

    @field_validator("host")
    @classmethod
    def _loopback(cls, host: str) -> str:
        if not _is_loopback(host):
            raise ValueError(f"{host!r}: enmei probes loopback only (127.0.0.0/8, ::1, localhost)")
        return host


class ExecProbe(_Model):
    """``kind = "exec"``: run ``command`` (argv, or a string split like a shell would, never through a
    shell); ok when it exits with a code in ``expect_exit`` within ``timeout_s``. Its exit code, run
    time and the first ``max_output_bytes`` of its output are the evidence. It runs in the unit's cgroup
    when the unit has one (so it is stopped with the unit), else as a plain child of enmei; its cwd
    and environment are the unit's when the unit is a process unit."""

    kind: Literal["exec"]
    name: str | None = None
    command: list[str] = Field(min_length=1)
    interval_s: float = Field(default=5.0, gt=0)
    timeout_s: float = Field(default=2.0, gt=0)
    expect_exit: list[int] = Field(default_factory=lambda: [0], min_length=1)
    max_output_bytes: int = Field(default=4096, ge=0, le=1 << 20)
    # liveness: failures are a probe_failed verdict (a restart); readiness: failures only make the unit
    # DEGRADED (no verdict, no restart), passes make it OK again.
    role: ProbeRole = "liveness"
    fail_after: int = Field(default=3, ge=1)

    @field_validator("command", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            import shlex

            return shlex.split(v)
        return v


class ProcessProbe(_Model):
    """Resource use of the unit (rss, cpu, fds, threads, I/O), from outside."""

    kind: Literal["process"]
    name: str | None = None
    interval_s: float = Field(default=1.0, gt=0)


class LogProbe(_Model):
    """Rate of captured log lines (all, or those matching ``pattern``) per second."""

    kind: Literal["log"]
    name: str | None = None
    stream: Literal["stdout", "stderr", "console"] = "stderr"
    # A log file the unit writes itself, read instead of the captured stream: an absolute path, or one
    # relative to the unit's cwd (a process unit's; else enmei's). Rotation and truncation are handled.
    path: str | None = Field(default=None, min_length=1)
    pattern: str | None = None
    interval_s: float = Field(default=5.0, gt=0)

    @field_validator("pattern")
    @classmethod
    def _regex(cls, pattern: str | None) -> str | None:
        return _check_regex(pattern)


def _check_regex(pattern: str | None) -> str | None:
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from exc
    return pattern


class CrossviewProbe(_Model):
    """``kind = "crossview"`` (VM units with ``ram = "shared"``): each process listing the guest prints on
    its console compared with its memory read from outside (``enmei.monitor.crossview_probe``); the
    ``crossview`` detector judges it."""

    kind: Literal["crossview"]
    name: str | None = None
    interval_s: float = Field(default=1.0, gt=0, le=3600)
    listing_timeout_s: float = Field(default=30.0, gt=0, le=86_400)
    #: guest directories under /data whose entries on the data disk, read from outside, are compared with the
    #: guest's own ls of them (the guest lists them with enmei.fileview=...)
    file_dirs: list[str] = Field(default_factory=list, max_length=64)

    @field_validator("file_dirs")
    @classmethod
    def _under_data(cls, dirs: list[str]) -> list[str]:
        for d in dirs:
            parts = d.split("/")
            if not (d == "/data" or d.startswith("/data/")) or ".." in parts:
                raise ValueError(f"{d!r} is not under /data (only the data disk is read from outside)")
        return dirs


ProbeConfig = Annotated[HttpProbe | TcpProbe | ExecProbe | ProcessProbe | LogProbe | CrossviewProbe,
                        Field(discriminator="kind")]
ActiveProbe = (HttpProbe, TcpProbe, ExecProbe)  # probes that pass or fail (with a fail_after)


class DegradeMode(_Model):
    """``[units.NAME.degrade.MODE]``: how to put the unit into a degraded mode (a command, or a URL)."""

    command: list[str] | None = None
    url: str | None = None
    timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _loopback(cls, url: str | None) -> str | None:
        return None if url is None else HttpProbe._loopback(url)

    @model_validator(mode="after")
    def _one(self) -> DegradeMode:
        if (self.command is None) == (self.url is None):
            raise ValueError("give exactly one of 'command' or 'url'")
        return self


class HttpInjector(_Model):
    """``[[units.NAME.injectors]] kind = "http"``: a synthetic request; the answer is the reaction."""

    kind: Literal["http"]
    name: str
    url: str
    method: Literal["GET", "POST"] = "GET"
    body: str = ""
    expect_status: list[int] = Field(default_factory=lambda: [200])
    expect_body: str | None = None  # a substring the answer must contain
    timeout_s: float = Field(default=2.0, gt=0)

    @field_validator("url")
    @classmethod
    def _loopback(cls, url: str) -> str:
        return HttpProbe._loopback(url)


class KeysInjector(_Model):
    """``[[units.NAME.injectors]] kind = "keys"``: type ``text`` into the unit (a VM's keyboard) and watch
    how much a counter moves within ``react_s`` (e.g. block writes: a guest that writes whenever someone
    types). The reaction is out of bounds past ``max_reaction``."""

    kind: Literal["keys"]
    name: str
    text: str
    react_s: float = Field(default=2.0, gt=0, le=60)
    watch: str = "wr_bytes"
    max_reaction: float | None = None


class TypingScheduleInjector(_Model):
    """``[[units.NAME.injectors]] kind = "typing_schedule"``: the engine types keystroke bursts (with bait)
    and silent control slots into a VM in rounds and observes its block writes and network between them
    (``enmei.monitor.schedule``); the ``keylogger`` detector judges them (``injector`` = this name).

    Rounds start by themselves (``auto``): ``start_after_s`` after the unit first runs, then ``every_s``
    after the last one ended, or when a policy decides
    ``inject(unit, NAME)``; ``inject(unit, NAME, pause_s = N)`` ends a running round and starts none for N
    seconds. A round ends at the detector's verdict, after ``round_slots`` slots or ``round_s`` seconds,
    or as soon as the unit is not running or is being repaired."""

    kind: Literal["typing_schedule"]
    name: str = "typing-schedule"
    auto: bool = True
    start_after_s: float = Field(default=10.0, ge=0, le=86_400)  # the first round, after the unit first runs
    every_s: float = Field(default=300.0, ge=0, le=86_400)  # between the end of a round and the next
    round_s: float = Field(default=180.0, gt=0, le=3600)
    round_slots: int = Field(default=36, ge=4, le=1000)
    gap_s: float = Field(default=5.5, gt=0, le=600)
    jitter_s: float = Field(default=1.0, ge=0, le=600)
    key_gap_s: float = Field(default=0.1, gt=0, le=5)
    interval_s: float = Field(default=0.25, gt=0, le=60)
    block_slots: int = Field(default=12, ge=2, le=1000)
    burst_keys: tuple[int, int] = (24, 28)  # a burst's keys in all, drawn in this range (>= a logger's buffer)
    echo: bool = False  # the guest echoes typed lines on its serial console ("enmei-keys: LINE"): check it
    echo_timeout_s: float = Field(default=6.0, gt=0, le=600)  # no echo this soon after a burst: dropped
    # a first phase of fast_slots short slots (0: none), then slots with min_quiet_s of silence after
    # each burst (a logger that flushes on a timer shorter than it writes in it); end_at_echo: a burst
    # ends when the guest echoed its line (with echo)
    fast_slots: int = Field(default=0, ge=0, le=1000)
    fast_gap_s: float = Field(default=2.0, gt=0, le=600)
    fast_jitter_s: float = Field(default=0.4, ge=0, le=600)
    fast_quiet_s: float = Field(default=0.3, ge=0, le=600)
    min_quiet_s: float = Field(default=0.3, ge=0, le=600)
    end_at_echo: bool = False
    sink: str | None = None  # a file the guest's outbound traffic is appended to (a guestfwd): bait is sought there
    seed: int | None = None  # a round's seed is seed + its number (none: drawn, and journaled)

    @field_validator("burst_keys")
    @classmethod
    def _burst_keys(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 2 <= v[0] <= v[1] <= 200:
            raise ValueError("burst_keys: [least, most] keys of a burst, 2 <= least <= most <= 200")
        return v


InjectorConfig = Annotated[HttpInjector | KeysInjector | TypingScheduleInjector, Field(discriminator="kind")]


def probe_name(probe: HttpProbe | TcpProbe | ExecProbe | ProcessProbe | LogProbe | CrossviewProbe) -> str:
    """A probe's name: its ``name`` key, else derived from its kind (``http``, ``proc``...)."""
    if probe.name:
        return probe.name
    if isinstance(probe, ProcessProbe):
        return "proc"
    return probe.kind


KillMode = Literal["group", "all", "main-then-group"]


def signal_name(v: Any) -> str:
    """A signal given by name (``"SIGINT"``, ``"int"``) or number, as its canonical name; ``ValueError``
    naming what is accepted otherwise. SIGKILL and SIGSTOP are refused: a stop signal must be catchable
    to be graceful (the forced phase sends SIGKILL anyway)."""
    import signal as _signal

    try:
        if isinstance(v, bool):
            raise ValueError
        if isinstance(v, int) or (isinstance(v, str) and v.strip().isdigit()):
            sig = _signal.Signals(int(v))
        elif isinstance(v, str):
            name = v.strip().upper()
            sig = _signal.Signals[name if name.startswith("SIG") else "SIG" + name]
        else:
            raise ValueError
    except (KeyError, ValueError):
        raise ValueError(f"{v!r} is not a signal: give a name (\"SIGINT\", \"INT\") or a number") from None
    if sig in (_signal.SIGKILL, _signal.SIGSTOP):
        raise ValueError(f"{sig.name} cannot be a graceful stop signal (the forced phase sends SIGKILL)")
    return sig.name


class _UnitBase(_Model):
    """The keys every unit has, whatever its backend. A backend's model subclasses it and narrows
    ``backend`` to its kind (``backend: Literal["process"]``), the tag the config union is built on."""

    backend: str
    stop_timeout_s: float = Field(default=10.0, gt=0)
    start_s: float = Field(default=1.0, ge=0)  # must stay up this long to count as started
    listen: list[str] = Field(default_factory=list)  # "127.0.0.1:8080": must be free at start
    autostart: bool = True
    probes: list[ProbeConfig] = Field(default_factory=list)
    log: LogConfig = Field(default_factory=LogConfig)
    restart: RestartConfig = Field(default_factory=RestartConfig)
    escalate: EscalateConfig = Field(default_factory=EscalateConfig)
    rejuvenate: RejuvenateConfig = Field(default_factory=RejuvenateConfig)
    detect: DetectConfig = Field(default_factory=DetectConfig)
    degrade: dict[str, DegradeMode] = Field(default_factory=dict)
    injectors: list[InjectorConfig] = Field(default_factory=list)
    # Start-up (at most one condition; none: started once up for start_s). Until the condition holds the
    # unit stays STARTING: its probes run but are not judged (liveness failures do not restart it); not
    # met within startup_timeout_s, the instance is stopped and the start has failed (the policy restarts
    # it with backoff). startup_probe: the first pass of that probe; startup_log: a line matching the regex
    # on startup_log_stream; startup_notify: READY=1 on the NOTIFY_SOCKET enmei gives the unit (sd_notify).
    startup_probe: str | None = None
    startup_log: str | None = None
    startup_log_stream: Literal["stdout", "stderr"] = "stderr"
    startup_notify: bool = False
    startup_timeout_s: float = Field(default=60.0, gt=0)
    # Order between units: a unit starts once the units it is `after` are running (their start-up
    # condition met), and stops before them; `requires` orders the same way and, while a required unit is
    # down or restarting, the dependent's probe failures and exits are not held against it (it waits).
    after: list[str] = Field(default_factory=list)
    requires: list[str] = Field(default_factory=list)
    # [[units.NAME.detectors]]: each entry validated by the options model its `kind` registered
    # (enmei.detect.registry); an entry replaces the default detector of its name, others add to them.
    detectors: list[DetectorOptions] = Field(default_factory=list)

    @field_validator("listen")
    @classmethod
    def _addresses(cls, items: list[str]) -> list[str]:
        for item in items:
            host, _, port = item.rpartition(":")
            if not port.isdigit() or not 0 < int(port) < 65536 or not host:
                raise ValueError(f"{item!r} is not HOST:PORT")
        return items

    @field_validator("detectors", mode="before")
    @classmethod
    def _detectors(cls, v: Any) -> Any:
        return validate_entries(v)

    @field_validator("startup_log")
    @classmethod
    def _startup_regex(cls, pattern: str | None) -> str | None:
        return _check_regex(pattern)

    @model_validator(mode="after")
    def _startup(self) -> _UnitBase:
        given = [k for k in ("startup_probe", "startup_log") if getattr(self, k) is not None]
        given += ["startup_notify"] if self.startup_notify else []
        if len(given) > 1:
            raise ValueError(f"give at most one start-up condition, not {' and '.join(given)}")
        if self.startup_probe is not None and self.startup_probe not in {probe_name(p) for p in self.probes}:
            names = ", ".join(probe_name(p) for p in self.probes) or "none"
            raise ValueError(f"startup_probe = {self.startup_probe!r} names no probe of this unit "
                             f"(its probes: {names})")
        if self.startup_notify and "env" not in type(self).model_fields:
            raise ValueError(f"startup_notify needs a unit that gets an environment; {self.backend} units do not")
        return self

    def startup_condition(self) -> str | None:
        """The start-up condition, described (``"probe pg"``, ``"log line /ready/"``, ``"READY=1"``), or None."""
        if self.startup_probe is not None:
            return f"probe {self.startup_probe}"
        if self.startup_log is not None:
            return f"a {self.startup_log_stream} line matching /{self.startup_log}/"
        return "READY=1 on NOTIFY_SOCKET" if self.startup_notify else None

    def start_bound_s(self) -> float:
        """The longest a start may take before it holds: ``start_s``, and with a start-up condition its
        ``startup_timeout_s`` plus the stop of an instance that never completed its start-up."""
        if self.startup_condition() is None:
            return self.start_s
        return self.start_s + self.startup_timeout_s + self.stop_bound_s()

    @model_validator(mode="after")
    def _unique_probe_names(self) -> _UnitBase:
        seen: set[str] = set()
        for p in self.probes:
            n = probe_name(p)
            if n in seen:
                raise ValueError(f"two probes are named {n!r}: give one a distinct 'name'")
            seen.add(n)
        for inj in self.injectors:
            if inj.name in seen:
                raise ValueError(f"injector {inj.name!r} has the name of a probe or another injector")
            seen.add(inj.name)
        return self

    @model_validator(mode="after")
    def _detectors_fit(self) -> _UnitBase:
        # An entry can be valid on its own and still not fit this unit (a reaction detector naming an
        # injector the unit lacks): build each once here, so that `enmei check` says so with its line.
        ctx = self.detector_context("")
        problems = [_detector_problem(i, msg) for i, opts in enumerate(self.detectors)
                    if (msg := check_fits(ctx, opts)) is not None]
        if problems:
            raise ValidationError.from_exception_data("detectors", problems)
        return self

    def stop_bound_s(self) -> float:
        """The longest a stop may take: the graceful timeout and the forced kill's 5 s (a backend's model
        adds its own phases)."""
        return self.stop_timeout_s + 5.0

    def detector_context(self, unit: str) -> DetectorContext:
        """What a detector factory learns of this unit: its probes and injectors, as plain values."""
        probes = tuple(ProbeInfo(probe_name(p), p.kind,
                                 p.fail_after if isinstance(p, ActiveProbe) else None,
                                 p.role if isinstance(p, ActiveProbe) else "liveness")
                       for p in self.probes)
        injectors = tuple(InjectorInfo(i.name, i.kind, i.watch, i.max_reaction) if isinstance(i, KeysInjector)
                          else InjectorInfo(i.name, i.kind) for i in self.injectors)
        return DetectorContext(unit, probes, injectors)


def _detector_problem(i: int, msg: str) -> Any:
    return _problem(("detectors", i), msg)


def _problem(loc: tuple[str | int, ...], msg: str) -> Any:
    return {"type": "value_error", "loc": loc, "input": None, "ctx": {"error": ValueError(msg)}}


def dependency_cycle(edges: Mapping[str, list[str]]) -> list[str] | None:
    """A cycle of ``edges`` (unit -> the units it is after or requires) as ``[a, b, ..., a]``, the first
    found in the mapping's order; None if there is none. Names outside ``edges`` are ignored.

    >>> dependency_cycle({"a": ["b"], "b": ["c"], "c": ["a"]})
    ['a', 'b', 'c', 'a']
    >>> dependency_cycle({"a": ["b"], "b": []}) is None
    True
    """
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in edges.get(node, []):
            if nxt not in edges:
                continue
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if state.get(nxt) is None and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for start in edges:
        if state.get(start) is None and (found := visit(start)) is not None:
            return found
    return None


class HeldSocket(_Model):
    """``[[units.NAME.sockets]]``: a listening socket enmei binds before the unit's first start and holds
    across its restarts and updates; every instance gets it by the ``LISTEN_FDS`` protocol (fd 3 onwards,
    in the order of the entries, named in ``LISTEN_FDNAMES``)."""

    address: str  # "127.0.0.1:8080" or "[::1]:8080"
    name: str | None = None  # its LISTEN_FDNAMES entry (default: "sock<index>")
    backlog: int = Field(default=1024, ge=1, le=65535)  # connections the kernel queues while none accepts

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{v!r} is not HOST:PORT (e.g. \"127.0.0.1:8080\" or \"[::1]:8080\")")
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        import ipaddress

        try:
            ipaddress.ip_address(bare)
        except ValueError:
            raise ValueError(f"{v!r}: the host must be an IP address (enmei binds it itself), not {host!r}") from None
        return v

    @field_validator("name")
    @classmethod
    def _fdname(cls, v: str | None) -> str | None:
        # LISTEN_FDNAMES is a colon-separated list of names of at most 255 characters, printable ASCII.
        if v is not None and (not v or len(v) > 255 or ":" in v or not v.isascii() or not v.isprintable()
                              or " " in v):
            raise ValueError(f"{v!r} is not a socket name: 1-255 printable ASCII characters, no ':' or space")
        return v


RestartMode = Literal["plain", "handover"]


class ProcessUnit(_UnitBase):
    """``[units.NAME]`` with ``backend = "process"``: any command, in its own session."""

    backend: Literal["process"] = "process"
    command: list[str] = Field(min_length=1)
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    inherit_env: bool = True
    # Stopping: the graceful signal (a name, "SIGINT" or "INT", or a number), who gets it, and an optional
    # command run first (its own timeout), then the signal path if the unit is still there.
    stop_signal: str = "SIGTERM"
    kill_mode: KillMode = "all"
    stop_command: list[str] | None = None
    stop_command_timeout_s: float = Field(default=10.0, gt=0)
    # Identity (applied in the child before exec; names are checked against this machine by `enmei check`).
    user: str | None = None
    group: str | None = None
    groups: list[str] | None = None  # supplementary; default: the user's own (never enmei's)
    umask: int | None = None  # "027" or 0o027
    # Commands run before each start (e.g. `nginx -t`), each within pre_start_timeout_s: a failure is a
    # config error of the unit (its start fails, is journaled and alerted), not a crash.
    pre_start: list[list[str]] = Field(default_factory=list)
    pre_start_timeout_s: float = Field(default=30.0, gt=0)
    # Resource limits (``enmei.visor.cage``), set where this host's cgroups allow it; elsewhere a notice
    # (journaled with the unit's first start, shown by `enmei check`) and the unit runs without the limit.
    cpu_max: float | None = Field(default=None, gt=0, le=4096)  # CPUs: 0.5, "0.5" or "50%"
    memory_max: ByteSize | None = Field(default=None, ge=1 << 20)  # "256MiB"; past it the kernel OOM-kills
    pids_max: int | None = Field(default=None, ge=1)  # processes and threads of the unit, all together
    # Listening sockets enmei holds for the unit (``enmei.visor.sockets``), and how a restart of a running
    # instance is done: "plain" (stop, then start: connections wait in the held socket's backlog) or
    # "handover" (the new instance is started beside the old on the same sockets, the old is stopped once
    # the new is ready: ``enmei.remedy.handover``).
    sockets: list[HeldSocket] = Field(default_factory=list)
    restart_mode: RestartMode = "plain"

    @field_validator("cpu_max", mode="before")
    @classmethod
    def _cpus(cls, v: Any) -> Any:
        return parse_cpus(v)

    @field_validator("user", "group", mode="before")
    @classmethod
    def _id_name(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("groups", mode="before")
    @classmethod
    def _id_names(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [str(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in v]
        return v

    @field_validator("umask", mode="before")
    @classmethod
    def _umask(cls, v: Any) -> Any:
        return None if v is None else parse_umask(v)

    @field_validator("pre_start", mode="before")
    @classmethod
    def _commands(cls, v: Any) -> Any:
        # One command (a string split like a shell, or an argv list of strings), or a list of argv lists.
        import shlex

        if isinstance(v, str):
            v = [v]
        elif isinstance(v, list) and v and all(isinstance(x, str) for x in v):
            return [v]
        if isinstance(v, list):
            return [shlex.split(c) if isinstance(c, str) else c for c in v]
        return v

    @field_validator("pre_start")
    @classmethod
    def _no_empty_command(cls, v: list[list[str]]) -> list[list[str]]:
        if any(not c for c in v):
            raise ValueError("an empty command")
        return v

    @field_validator("command", "stop_command", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            import shlex

            return shlex.split(v)
        return v

    @field_validator("stop_command")
    @classmethod
    def _not_empty(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("an empty command: leave the key out for none")
        return v

    @field_validator("stop_signal", mode="before")
    @classmethod
    def _signal(cls, v: Any) -> Any:
        return signal_name(v)

    @model_validator(mode="after")
    def _held_sockets(self) -> ProcessUnit:
        seen: dict[str, int] = {}
        names: dict[str, int] = {}
        for i, sock in enumerate(self.sockets):
            where = f"sockets[{i}]"
            if sock.address in seen:
                raise ValueError(f"{where}.address {sock.address!r} is also sockets[{seen[sock.address]}]")
            seen[sock.address] = i
            if sock.address in self.listen:
                raise ValueError(f"{where}.address {sock.address!r} is also in listen (which must be free at "
                                 "start): enmei holds it itself, leave it out of listen")
            name = self.socket_names()[i]
            if name in names:
                raise ValueError(f"{where}.name {name!r} is also the name of sockets[{names[name]}]")
            names[name] = i
        if len(self.sockets) > 64:
            raise ValueError(f"sockets: at most 64 entries, not {len(self.sockets)}")
        if self.restart_mode == "handover":
            if not self.sockets:
                raise ValueError("restart_mode = \"handover\" needs [[sockets]]: the new instance takes over "
                                 "the sockets enmei holds")
            asked = [k for k in ("cpu_max", "memory_max", "pids_max") if getattr(self, k) is not None]
            if asked:
                raise ValueError(f"restart_mode = \"handover\" with {', '.join(asked)}: the Resource Cage's "
                                 "limits hold one instance, not two side by side; leave one of them out")
        return self

    def socket_names(self) -> list[str]:
        """The ``LISTEN_FDNAMES`` of the held sockets, in order (``sock0``... where no name is given)."""
        return [s.name or f"sock{i}" for i, s in enumerate(self.sockets)]

    def stop_bound_s(self) -> float:
        """The longest a stop may take: the stop command's timeout, the graceful signal's, the forced kill's."""
        extra = self.stop_command_timeout_s if self.stop_command else 0.0
        return super().stop_bound_s() + extra


def parse_cpus(v: Any) -> Any:
    """A CPU share as a number of CPUs: ``"50%"`` is 0.5, ``"0.5"`` and ``0.5`` are 0.5; anything else is
    left for the model to refuse (a string it cannot read is a ValueError naming the forms it takes).

    >>> parse_cpus("50%"), parse_cpus("1.5"), parse_cpus(2)
    (0.5, 1.5, 2)
    """
    if isinstance(v, str):
        text = v.strip()
        try:
            return float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
        except ValueError:
            raise ValueError(f"{v!r} is not a CPU share: write CPUs (\"0.5\") or a percentage (\"50%\")") from None
    return v


def _unit_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"unit name {name!r}: use letters, digits, '_', '.', '-' (64 at most), "
                         "starting with a letter or digit")
    return name


# A unit's name, checked as the key it is (so an error points at the unit's own table).
UnitName = Annotated[str, AfterValidator(_unit_name)]

UnitBase = _UnitBase  # the keys every backend shares
# A unit's config, statically: every backend's model is a ``UnitBase`` (the union is built at run time).
UnitConfig = _UnitBase


class Config(_Model):
    """The whole file. ``source`` is where it was read from (set by ``load``; not a TOML key).

    ``units`` holds each unit's model as its backend declares it (``enmei.visor.registry``): validate
    a file's data with ``config_model().model_validate(data)``, which knows every registered backend.
    """

    supervisor: SupervisorConfig = Field(default_factory=SupervisorConfig)
    fleet: FleetConfig | None = None
    units: dict[UnitName, UnitBase] = Field(default_factory=dict)

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:
        """``Config.model_validate(data)`` validates with every registered backend's model (as
        ``config_model().model_validate`` does); on a built subclass it is pydantic's own."""
        if cls is Config:
            return cast(Self, config_model().model_validate(obj, **kwargs))
        return super().model_validate(obj, **kwargs)

    @model_validator(mode="after")
    def _dependencies(self) -> Self:
        # Checked on the whole file (a unit cannot see the others): each problem at its own key and line.
        problems: list[Any] = []
        if self.fleet is not None and self.fleet.database is None and not self.supervisor.journal.startswith(
                ("postgresql:", "postgres:")):
            problems.append(_problem(("fleet",), "a fleet needs its PostgreSQL database: set [fleet] database, "
                                                 "or [supervisor] journal to a postgresql:// URL"))
        for name, unit in self.units.items():
            for key in ("after", "requires"):
                for i, other in enumerate(getattr(unit, key)):
                    why = None
                    if other == name:
                        why = f"unit {name} cannot be {key.removesuffix('s')} itself"
                    elif other not in self.units:
                        why = f"{other!r} names no unit (units: {', '.join(self.units)})"
                    if why is not None:
                        problems.append(_problem(("units", name, key, i), why))
        if not problems:
            cycle = dependency_cycle({n: [*u.after, *u.requires] for n, u in self.units.items()})
            if cycle is not None:
                first, second = cycle[0], cycle[1]
                unit = self.units[first]
                key = "after" if second in unit.after else "requires"
                problems.append(_problem(("units", first, key, [*getattr(unit, key)].index(second)),
                                         f"a dependency cycle: {' -> '.join(cycle)}"))
        if problems:
            raise ValidationError.from_exception_data("Config", problems)
        return self

    @field_validator("units", mode="before")
    @classmethod
    def _default_backend(cls, v: Any) -> Any:
        # ``backend`` may be left out for the embedded default, the process backend.
        if isinstance(v, Mapping):
            out: dict[str, Any] = {}
            for name, raw in v.items():
                unit = raw
                if isinstance(unit, Mapping) and "backend" not in unit:
                    unit = {"backend": DEFAULT_BACKEND, **unit}
                out[name] = unit
            return out
        return v


DEFAULT_BACKEND = "process"
_built: dict[int, type[Config]] = {}


def config_model() -> type[Config]:
    """``Config`` with ``units`` validated as the union of every registered backend's model.

    Built once per state of the registry (a backend registered later gets a new model). A unit whose
    ``backend`` is not registered is an error naming the known ones.
    """
    from enmei.visor import registry  # the registry imports no config: no cycle

    gen = registry.generation()
    model = _built.get(gen)
    if model is None:
        models = tuple(registry.config_models())
        union: Any = models[0] if len(models) == 1 else Annotated[Union[models], Field(discriminator="backend")]  # noqa: UP007
        model = create_model("Config", __base__=Config, __module__=__name__,
                             units=(dict[UnitName, union], Field(default_factory=dict)))
        _built.clear()
        _built[gen] = model
    return model


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

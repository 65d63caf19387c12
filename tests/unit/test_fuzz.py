"""Fuzzing (hypothesis) of what reads untrusted input: the config loader, log ingestion, journal bodies.

Each target counts the inputs it was given and fails if hypothesis gave it fewer than half the examples
asked for (a fuzzer that silently stopped running would otherwise pass); ``ENMEI_FUZZ_EXAMPLES`` raises
the number per target (the suite runs a few hundred; the closing notes quote a long run).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import string
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enmei.box import Journal, Reader, verify
from enmei.clock import FakeClock
from enmei.config.load import load_text
from enmei.errors import ConfigError
from enmei.monitor.lograte import LogProbe

N = int(os.environ.get("ENMEI_FUZZ_EXAMPLES", "200"))
TRIED: Counter[str] = Counter()
FUZZ = settings(max_examples=N, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEYS = ["supervisor", "units", "web", "command", "backend", "probes", "kind", "url", "interval_s", "port",
        "restart", "budget", "escalate", "listen", "detect", "aging_limits", "rss_bytes", "env", "log",
        "max_bytes", "stop_timeout_s", "state_dir", "injectors", "degrade", "name", "text", "forward"]
scalars = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=False), st.booleans(),
                    st.text(max_size=30), st.sampled_from(["process", "qemu", "http", "tcp", "127.0.0.1:80",
                                                           "http://127.0.0.1:1/", "/bin/true", "512MiB"]))
values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                   st.dictionaries(st.sampled_from(KEYS), c, max_size=5)),
                      max_leaves=20)


def counted(name: str, minimum: int) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """Run a ``@given`` target as a test that also fails if it was given fewer than ``minimum`` inputs."""

    def wrap(fuzz: Callable[[], None]) -> Callable[[], None]:
        def test() -> None:
            before = TRIED[name]
            fuzz()
            tried = TRIED[name] - before
            print(f"fuzz inputs tried: {name}: {tried}")
            assert tried >= minimum, f"{name}: only {tried} inputs (wanted {minimum})"

        test.__name__ = test.__qualname__ = fuzz.__name__
        test.__doc__ = fuzz.__doc__
        return test

    return wrap


def _toml(value: Any, path: str = "") -> str:
    """A TOML rendering of nested dicts (tables), lists and scalars."""
    lines: list[str] = []
    tables: list[str] = []
    for k, v in value.items():
        key = json.dumps(k)
        if isinstance(v, dict):
            tables.append(f"\n[{path + '.' if path else ''}{key}]\n" + _toml(v, f"{path + '.' if path else ''}{key}"))
        else:
            lines.append(f"{key} = {_val(v)}")
    return "\n".join(lines) + "".join(tables) + "\n"


def _val(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if not isinstance(v, float) or math.isfinite(v) else "nan"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_val(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_val(x)}" for k, x in v.items()) + "}"


@counted("config: structured documents", N // 2)
@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=6))
def test_config_loader_structured(doc: dict[str, Any]) -> None:
    TRIED["config: structured documents"] += 1
    problem: ConfigError | None = None
    try:
        load_text(_toml(doc), Path("/tmp/fuzz.toml"))
    except ConfigError as exc:
        problem = exc
    assert problem is None or str(problem).startswith("/tmp/fuzz.toml")


@counted("config: raw text", N // 2)
@FUZZ
@given(st.text(alphabet=string.printable + "[]=\"'{}.\n\u00e9\u5ef6", max_size=300))
def test_config_loader_text(text: str) -> None:
    """Any text either loads (a config whose units all have a command or a backend) or is refused with a
    ConfigError that names the file, and a line when the TOML itself is broken."""
    TRIED["config: raw text"] += 1
    problem: ConfigError | None = None
    try:
        loaded = load_text(text, Path("/tmp/fuzz.toml"))
    except ConfigError as exc:
        problem = exc
    if problem is None:
        assert loaded.path == Path("/tmp/fuzz.toml")
        assert all(u.backend for u in loaded.config.units.values())
    else:
        assert str(problem).startswith("/tmp/fuzz.toml"), str(problem)
        assert problem.message.strip(), "an error must say what is wrong"
        if problem.message.startswith("not valid TOML"):
            assert problem.line is not None and problem.line >= 1, str(problem)


@counted("log ingestion", N // 2)
@FUZZ
@given(st.lists(st.binary(max_size=2000), max_size=6), st.sampled_from([None, "ERROR", "[", "(a|b)+$"]))
def test_log_ingestion(chunks: list[bytes], pattern: str | None) -> None:
    TRIED["log ingestion"] += 1
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "u.stderr.log"
        clock = FakeClock()
        if pattern == "[":  # an invalid pattern is refused by the config, before any probe exists
            with pytest.raises(re.error):
                LogProbe("u", "log", 1.0, clock, path=path, pattern=pattern)
            return
        probe = LogProbe("u", "log", 1.0, clock, path=path, pattern=pattern, max_read=4096)

        async def go() -> None:
            for i, chunk in enumerate(chunks):
                mode = "wb" if i % 3 == 2 else "ab"  # sometimes truncated and rewritten (rotation)
                with open(path, mode) as f:
                    f.write(chunk)
                clock.advance(1.0)
                obs = await probe.observe()
                assert obs.ok and obs.values["lines_per_s"] >= 0

        asyncio.run(go())


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**80, 2**80), st.floats(), st.text(max_size=40)),
    lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=8), c, max_size=4)),
    max_leaves=25)


@counted("journal bodies", max(20, N // 10) // 2)
@settings(max_examples=max(20, N // 10), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.text(max_size=12), st.one_of(st.none(), st.text(max_size=12)),
                          st.dictionaries(st.text(max_size=8), json_values, max_size=5)), min_size=1, max_size=15))
def test_journal_takes_any_body_and_verifies(items: list[tuple[str, str | None, dict[str, Any]]]) -> None:
    TRIED["journal bodies"] += len(items)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "j.sqlite"
        with Journal(path) as j:
            for kind, unit, body in items:
                j.append(kind, unit, body)
            assert j.flush(10)
        assert verify(path).ok
        with Reader(path) as r:
            assert r.count() == len(items)
            for rec in r.records():
                json.loads(rec.body)  # always valid JSON (non-finite floats are strings)

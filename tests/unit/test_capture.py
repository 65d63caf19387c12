"""Pipe capture into bounded logs (``enmei.visor.capture``, ``enmei.visor.logs.RotatingFile``), with real
pipes and the real capture thread; the writer is this test (no subprocess)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from enmei.fsafe import UnsafePathError
from enmei.visor.capture import Capture, make_pipe
from enmei.visor.logs import RotatingFile


def _disk(d: Path) -> int:
    total = 0
    for p in list(d.iterdir()):
        try:
            total += p.stat().st_size
        except FileNotFoundError:
            continue  # renamed away between listing and stat (a rotation)
    return total


def test_rotating_file_never_passes_its_bound_and_keeps_lines_whole(tmp_path: Path) -> None:
    f = RotatingFile(tmp_path / "u.log", max_bytes=100, keep=2)
    f.write(b"y" * 250)  # longer than a file: split
    assert f.size == 50
    for i in range(200):
        f.write(f"line {i:03d}\n".encode())  # 9 bytes: 11 lines a file
    f.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["u.log", "u.log.1", "u.log.2"]
    assert all(p.stat().st_size <= 100 for p in tmp_path.iterdir())
    assert (tmp_path / "u.log.2").read_bytes().startswith(b"line ")  # the last lines, whole
    assert (tmp_path / "u.log.2").read_bytes().endswith(b"\n")


def test_rotating_file_rotates_an_oversized_file_first_and_refuses_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "old.log").write_bytes(b"z" * 5000)  # left by an older enmei
    f = RotatingFile(tmp_path / "old.log", max_bytes=1000, keep=1)
    f.write(b"new\n")
    f.close()
    assert (tmp_path / "old.log").read_bytes() == b"new\n"
    (tmp_path / "secret").write_text("root only")
    (tmp_path / "u.log").symlink_to(tmp_path / "secret")
    f = RotatingFile(tmp_path / "u.log", max_bytes=10, keep=1)
    assert isinstance(f.error, UnsafePathError)
    for _ in range(3):
        with pytest.raises(UnsafePathError, match="symlink"):
            f.write(b"never through the link\n")
    assert (tmp_path / "secret").read_text() == "root only" and not (tmp_path / "u.log.1").exists()
    (tmp_path / "u.log").unlink()
    f.write(b"ok\n")  # opened again once it can be
    f.close()
    assert (tmp_path / "u.log").read_bytes() == b"ok\n"


class _Events:
    def __init__(self) -> None:
        self.items: list[tuple[str, str, dict[str, Any]]] = []
        self.cond = threading.Condition()

    def __call__(self, unit: str, stream: str, detail: dict[str, Any]) -> None:
        with self.cond:
            self.items.append((unit, stream, detail))
            self.cond.notify_all()

    def wait_for(self, phase: str, timeout: float = 30.0) -> dict[str, Any]:
        with self.cond:
            assert self.cond.wait_for(lambda: any(d["phase"] == phase for _, _, d in self.items), timeout), self.items
            return next(d for _, _, d in self.items if d["phase"] == phase)


def test_a_flood_is_bounded_on_disk_dropped_counted_and_one_episode(tmp_path: Path) -> None:
    events = _Events()
    cap = Capture(events, quiet_s=0.5)
    r, w = make_pipe()
    logs = tmp_path / "logs"
    logs.mkdir()
    max_bytes, keep, rate = 64 << 10, 2, 256 << 10
    cap.add("u", "stdout", r, logs / "u.stdout.log", max_bytes=max_bytes, keep=keep, rate=rate)
    chunk = (b"x" * 1023 + b"\n") * 64  # 64 KiB
    peak, sent, t0 = 0, 0, time.monotonic()
    try:
        while time.monotonic() - t0 < 2.0 and sent < 2 << 30:
            sent += os.write(w, chunk)  # blocks when the pipe is full: back-pressure
            peak = max(peak, _disk(logs))
        began = events.wait_for("begin")
        assert began["limit_bytes_per_s"] == rate
        ended = events.wait_for("end")  # 0.5 s after the last drop
    finally:
        os.close(w)
    c = cap.counters()[("u", "stdout")]
    cap.close()
    assert peak <= max_bytes * (keep + 1) + 200, peak
    assert _disk(logs) <= max_bytes * (keep + 1) + 200
    assert sent > 2 * rate * 2.0  # it really flooded (the pipe took more than twice the write allowance)
    assert c.floods == 1 and not c.flooding
    # written within the allowance (one second of burst plus the rate), the rest dropped and counted
    assert c.written_bytes <= rate * (1 + (time.monotonic() - t0)) + 200
    assert c.written_bytes + c.dropped_bytes >= sent - (1 << 20)  # all but what the pipe may still hold
    assert ended["dropped_bytes"] == c.dropped_bytes > 0
    assert b"[enmei] output flood:" in (logs / "u.stdout.log").read_bytes()
    assert [d["phase"] for _, _, d in events.items] == ["begin", "end"]


def test_drain_writes_what_the_pipe_holds_and_eof_ends_the_stream(tmp_path: Path) -> None:
    cap = Capture(_Events(), cycle_s=1.0)  # a slow thread: only drain can have written it in time
    r, w = make_pipe()
    cap.add("u", "stderr", r, tmp_path / "u.stderr.log", max_bytes=1 << 20, keep=1, rate=1 << 20)
    try:
        os.write(w, b"last words\n")
        cap.drain("u")
        assert (tmp_path / "u.stderr.log").read_bytes() == b"last words\n"
        os.write(w, b"more\n")
    finally:
        os.close(w)
    cap.remove("u")
    assert (tmp_path / "u.stderr.log").read_bytes() == b"last words\nmore\n"
    assert not cap.capturing("u", "stderr")
    cap.close()


def test_the_doctests_of_capture_logs_cgroup_and_process_run() -> None:
    import doctest
    import importlib

    for name in ("enmei.visor.logs", "enmei.visor.capture", "enmei.visor.cgroup", "enmei.visor.process"):
        result = doctest.testmod(importlib.import_module(name))
        assert result.failed == 0, name
    assert doctest.testmod(importlib.import_module("enmei.visor.logs")).attempted > 0


def test_a_log_that_cannot_be_written_is_counted_and_capture_goes_on(tmp_path: Path) -> None:
    cap = Capture(_Events())
    r, w = make_pipe()
    log = tmp_path / "u.stdout.log"
    cap.add("u", "stdout", r, log, max_bytes=2000, keep=1, rate=1 << 20)
    try:
        os.write(w, b"a" * 999 + b"\n")
        cap.drain("u")
        (tmp_path / "secret").write_text("root only\n")
        os.unlink(log)
        log.symlink_to(tmp_path / "secret")
        os.write(w, b"b" * 1999 + b"\n")  # a rotation: the symlink is renamed away, never followed
        cap.drain("u")
        assert (tmp_path / "secret").read_text() == "root only\n"
        assert not log.is_symlink() and log.read_bytes() == b"b" * 1999 + b"\n"
        os.unlink(log)
        log.mkdir()  # now neither the rotation nor a new file can succeed
        os.write(w, b"c" * 1999 + b"\n")
        cap.drain("u")
        os.write(w, b"d" * 100 + b"\n")
        cap.drain("u")
        c = cap.counters()[("u", "stdout")]
        assert c.write_errors >= 2 and c.dropped_bytes >= 2000 + 101
        log.rmdir()
        os.write(w, b"e\n")
        cap.drain("u")  # the file is opened again: capture goes on
        assert log.read_bytes() == b"e\n"
    finally:
        os.close(w)
        cap.close()

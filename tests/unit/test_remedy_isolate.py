"""The ``isolate`` remedy on a fake guest (the fake backend with a network link and snapshots): the link is
cut first, then a forensic snapshot is kept; a snapshot that fails keeps the isolation; a link that
cannot be cut is a failure; without the capability the policy's ``can`` never offers it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from enmei.clock import FakeClock
from enmei.errors import VisorError
from enmei.model import RemedyState
from enmei.remedy import REMEDIES
from enmei.remedy.isolate import Isolate
from enmei.visor.base import Backend, Capability
from enmei.visor.fake import FakeBackend


class Guest(FakeBackend):
    """Overrides only the I/O edge: the link and the snapshots are lists of what was asked."""

    capabilities: ClassVar[frozenset[Capability]] = FakeBackend.capabilities | {Capability.NET_LINK,
                                                                                Capability.SNAPSHOT}
    link_fails = False
    snapshot_fails = False

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.calls: list[tuple[str, object]] = []

    async def set_link(self, name: str, up: bool) -> None:
        if self.link_fails:
            raise VisorError(name, "network link", "QMP is gone")
        self.calls.append(("link", up))

    async def snapshot_save(self, name: str, tag: str) -> None:
        if self.snapshot_fails:
            raise VisorError(name, "snapshot save", "disk full")
        self.calls.append(("snapshot", tag))

    async def snapshot_load(self, name: str, tag: str) -> None:
        raise NotImplementedError

    async def snapshot_list(self, name: str) -> list[str]:
        return []

    async def snapshot_delete(self, name: str, tag: str) -> None:
        raise NotImplementedError


@dataclass
class Control:
    name: str
    clock: FakeClock
    backend: Backend


def _control(tmp_path: Path, **flags: bool) -> tuple[Control, Guest]:
    clock = FakeClock()
    g = Guest(clock=clock, state_dir=tmp_path, emit=lambda e: None)
    for k, v in flags.items():
        setattr(g, k, v)
    return Control("vm", clock, g), g


async def test_the_link_is_cut_then_a_forensic_snapshot_is_kept(tmp_path: Path) -> None:
    unit, g = _control(tmp_path)
    r = await Isolate().run(unit, {"why": "keylogger suspected"})  # type: ignore[arg-type]
    assert r.state is RemedyState.SUCCEEDED and r.data["isolated"] is True
    assert g.calls[0] == ("link", False) and g.calls[1][0] == "snapshot"
    assert str(g.calls[1][1]).startswith("forensics-") and r.data["snapshot"] == g.calls[1][1]


async def test_a_failed_snapshot_keeps_the_isolation(tmp_path: Path) -> None:
    unit, g = _control(tmp_path, snapshot_fails=True)
    r = await Isolate().run(unit, {"why": "x"})  # type: ignore[arg-type]
    assert r.state is RemedyState.SUCCEEDED and g.calls == [("link", False)] and r.data["snapshot"] is None
    assert "disk full" in r.detail


async def test_a_link_that_cannot_be_cut_is_a_failure(tmp_path: Path) -> None:
    unit, g = _control(tmp_path, link_fails=True)
    r = await Isolate().run(unit, {"why": "x"})  # type: ignore[arg-type]
    assert r.state is RemedyState.FAILED and "QMP is gone" in r.detail and g.calls == []


def test_isolate_is_registered_and_needs_the_link_capability() -> None:
    assert REMEDIES["isolate"] is Isolate and Isolate.needs == frozenset({Capability.NET_LINK})
    with pytest.raises(KeyError):
        REMEDIES["isolate_all"]

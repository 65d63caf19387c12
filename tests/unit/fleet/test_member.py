"""The leader logic of ``enmei.fleet.lease.Member`` over a fake lease store (an in-memory subclass of the
real one, overriding only its database edge) and a fake clock: no sockets, no threads."""

from __future__ import annotations

from typing import Any

import pytest

from enmei.errors import BoxError
from enmei.fleet.lease import LEADER, Grant, LeaseStore, Member


class FakeStore(LeaseStore):
    """Leases in a dict, on the test's clock; ``down`` makes every call fail as an unreachable database."""

    def __init__(self, now: list[float]) -> None:
        super().__init__("postgresql://unused@127.0.0.1/x")
        self.now = now
        self.leases: dict[str, tuple[str, int, float]] = {}
        self.tokens = 0
        self.down = False

    def _run(self, sql: str, args: dict[str, Any]) -> list[tuple[Any, ...]]:
        raise AssertionError("the fake never speaks SQL")

    def _check(self) -> None:
        if self.down:
            raise BoxError("fleet database: connection refused")

    def acquire(self, name: str, holder: str, ttl_s: float) -> Grant | None:
        self._check()
        cur = self.leases.get(name)
        if cur is not None and cur[2] >= self.now[0]:
            return None
        self.tokens += 1
        self.leases[name] = (holder, self.tokens, self.now[0] + ttl_s)
        return Grant(name, holder, self.tokens, ttl_s)

    def renew(self, grant: Grant, ttl_s: float) -> Grant | None:
        self._check()
        cur = self.leases.get(grant.name)
        if cur is None or cur[:2] != (grant.holder, grant.token) or cur[2] < self.now[0]:
            return None
        self.leases[grant.name] = (grant.holder, grant.token, self.now[0] + ttl_s)
        return Grant(grant.name, grant.holder, grant.token, ttl_s)

    def current(self, name: str) -> tuple[str, int, float] | None:
        self._check()
        cur = self.leases.get(name)
        return (cur[0], cur[1], cur[2] - self.now[0]) if cur else None


@pytest.fixture
def rig() -> tuple[list[float], FakeStore]:
    now = [100.0]
    return now, FakeStore(now)


def _member(host: str, now: list[float], events: list[tuple[str, str, dict[str, Any]]]) -> Member:
    return Member("postgresql://unused@127.0.0.1/x", host, ttl_s=3.0, margin_s=0.3, mono=lambda: now[0],
                  on_event=lambda e, b: events.append((host, e, b)))


def test_one_leader_and_a_follower_that_wakes_when_the_lease_runs_out(rig: tuple[list[float], FakeStore]) -> None:
    now, store = rig
    events: list[tuple[str, str, dict[str, Any]]] = []
    a, b = _member("a", now, events), _member("b", now, events)
    assert a._compete(store) == pytest.approx(1.0) and a.is_leader and a.token == 1
    now[0] += 0.5
    assert b._compete(store) == pytest.approx(1.0) and not b.is_leader  # looks again every ttl/3 ...
    now[0] += 1.0
    assert b._compete(store) == pytest.approx(1.0)
    now[0] += 1.0
    assert b._compete(store) == pytest.approx(0.5 + 0.02)  # ... and just after the expiry when it is near
    # a died (never renews again): b takes over at that moment, 3.02 s after a's last renewal
    now[0] += 0.52
    b._compete(store)
    assert b.is_leader and b.token == 2 and events[-1] == ("b", "leader", {"token": 2, "ttl_s": 3.0})
    # a comes back from a pause: its renewal is refused, it learns it was deposed
    a._compete(store)
    assert not a.is_leader and events[-1][:2] == ("a", "follower") and "deposed" in events[-1][2]["why"]


def test_a_leader_cut_off_from_the_database_steps_down_before_its_lease_expires(
        rig: tuple[list[float], FakeStore]) -> None:
    now, store = rig
    events: list[tuple[str, str, dict[str, Any]]] = []
    a = _member("a", now, events)
    a._compete(store)
    store.down = True
    with pytest.raises(BoxError):
        a._compete(store)
    now[0] += 2.7  # ttl - margin has passed on its clock; the database still counts 0.3 s
    assert a.is_leader is False and a.token is None
    assert store.leases[LEADER][2] > now[0], "it stepped down while the database still held its lease"


def test_a_released_lease_is_taken_at_once(rig: tuple[list[float], FakeStore]) -> None:
    now, store = rig
    events: list[tuple[str, str, dict[str, Any]]] = []
    a, b = _member("a", now, events), _member("b", now, events)
    a._compete(store)
    store.leases[LEADER] = (*store.leases[LEADER][:2], now[0] - 0.001)  # what release() does
    b._compete(store)
    assert b.is_leader and b.token == 2


def test_a_fleet_without_a_database_is_a_config_error(tmp_path: Any) -> None:
    from enmei.config.load import load_text
    from enmei.errors import ConfigError

    with pytest.raises(ConfigError, match="a fleet needs its PostgreSQL database") as info:
        load_text('[supervisor]\nstate_dir = "s"\n\n[fleet]\nlease_ttl_s = 3\n', tmp_path / "enmei.toml")
    assert info.value.line == 4
    ok = load_text('[supervisor]\njournal = "postgresql://e@127.0.0.1/e"\n\n[fleet]\n', tmp_path / "enmei.toml")
    assert ok.fleet_dsn == "postgresql://e@127.0.0.1/e" and ok.config.fleet is not None
    assert ok.config.fleet.lease_ttl_s == 5.0

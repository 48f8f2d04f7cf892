"""Bounded state (issue #20 item 4): every store that grows with calls is filled past its bound;
its size stays at the bound and the newest items are kept and still queryable. Durations are
measured by the soak (`python -m bench.soak`, in `make bench`), never here."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from harness.bounded import BoundedLog, capacity_from_env
from harness.caep_receiver import CaepReceiver
from harness.verify.approvals import KEEP_ENDED, Approvals
from harness.verify.audit import AuditTrail, Decision
from iia.antenna import AGENT
from iia.antenna.anomaly import AnomalyDetector, AnomalyRules
from iia.antenna.store import PRUNE_EVERY, NewSet, Store
from iia.chat.sessions import ChatSessionStore
from iia.errors import ConfigurationError
from iia.events import SecurityEvent
from iia.hitl import ConsentCache
from iia.settings import AntennaBounds
from tests.test_antenna import World, eventually, world  # noqa: F401  (the fixture)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- Antenna's outbox ---------------------------------------------------------------------------

def _fill(store: Store, n: int, start: int = 0, stream: str = "s1") -> list[int]:
    store.append([NewSet(stream, f"jti-{i}", "t", {"i": i}, f"ev-{i}")
                  for i in range(start, start + n)])
    return [row.id for row in store.pending(stream, n)]


def test_antenna_prunes_delivered_sets_by_count_keeping_the_newest(tmp_path: Path) -> None:
    store = Store(tmp_path / "a.sqlite", keep_rows=50)
    store.put_stream("s1", "owner", {"delivery": {"method": "push"}})
    store.put_stream("s2", "owner", {"delivery": {"method": "push"}})
    _fill(store, 5, start=10_000, stream="s2")  # older than all: s2's receiver is away
    for batch in range(6):  # 600 SETs delivered, 100 at a time
        store.delivered(*_fill(store, 100, start=batch * 100))
    size = store.size()
    assert size["outbox_delivered"] == 50 and size["sets_by_event"] == 50 + 5  # s2 pending
    assert store.sets_for("ev-599") == [("s1", "jti-599")]  # the newest: kept, joinable
    assert store.sets_for("ev-550") == [("s1", "jti-550")]
    assert store.sets_for("ev-549") == [] and store.sets_for("ev-0") == []  # the oldest: gone
    # pending SETs are never pruned (delivery is at least once), however old or many
    assert [r.jti for r in store.pending("s2", 10)] == [f"jti-{i}" for i in range(10_000, 10_005)]
    _fill(store, 3 * PRUNE_EVERY, start=1000)
    store.prune()
    assert store.size()["outbox_pending"] == 3 * PRUNE_EVERY + 5
    assert store.size()["outbox_delivered"] == 50


def test_antenna_prunes_delivered_sets_by_age(tmp_path: Path) -> None:
    clock = Clock()
    store = Store(tmp_path / "a.sqlite", clock, keep_seconds=60, keep_rows=10_000)
    store.put_stream("s1", "owner", {"delivery": {"method": "push"}})
    store.delivered(*_fill(store, 30))
    clock.now += 61
    store.delivered(*_fill(store, 20, start=30))
    assert store.prune() == 30  # the 30 delivered more than a minute ago
    assert store.size()["outbox_delivered"] == 20 and store.sets_for("ev-49")
    assert store.sets_for("ev-29") == []


def test_antenna_file_stays_flat_once_the_bound_is_reached(tmp_path: Path) -> None:
    """SQLite reuses the pages pruning frees: the database file stops growing."""
    path = tmp_path / "a.sqlite"
    store = Store(path, keep_rows=100)
    store.put_stream("s1", "owner", {"delivery": {"method": "push"}})

    def size() -> int:
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return path.stat().st_size

    for batch in range(10):
        store.delivered(*_fill(store, 100, start=batch * 100))
    warmed = size()
    for batch in range(10, 40):
        store.delivered(*_fill(store, 100, start=batch * 100))
    assert size() <= warmed + 8192  # 3000 more SETs: a page or two at most


def test_antenna_bounds_are_settings_with_defaults() -> None:
    bounds = AntennaBounds.from_env({})
    assert (bounds.keep_delivered_seconds, bounds.keep_delivered_sets,
            bounds.anomaly_idle_seconds) == (3600.0, 2000, 3600.0)
    set_ = AntennaBounds.from_env({"IIA_ANTENNA_KEEP_DELIVERED_SETS": "7",
                                   "IIA_ANTENNA_KEEP_DELIVERED_SECONDS": "30"})
    assert set_.keep_delivered_sets == 7 and set_.keep_delivered_seconds == 30.0
    with pytest.raises(ConfigurationError, match="IIA_ANTENNA_KEEP_DELIVERED_SETS"):
        AntennaBounds.from_env({"IIA_ANTENNA_KEEP_DELIVERED_SETS": "0"})


def test_antenna_wires_its_bounds_into_the_outbox(world: World) -> None:  # noqa: F811
    assert world.antenna.store.keep_rows == AntennaBounds().keep_delivered_sets


# -- the anomaly detector -------------------------------------------------------------------

def _exchange(sid: str) -> SecurityEvent:
    return SecurityEvent("agent:token_exchange_success", session_id=sid, tier=1)


def test_anomaly_state_of_idle_sessions_is_pruned_and_the_active_one_kept() -> None:
    clock = Clock()
    revoked: list[str] = []
    detector = AnomalyDetector(AnomalyRules(tier4_window=60, calls_per_minute=1000),
                               lambda sid, email, why: revoked.append(sid), clock,
                               idle_seconds=120)
    for i in range(2000):  # 2000 sessions, each one call, a second apart
        clock.now += 1
        detector.observe(_exchange(f"s-{i}"))
    assert detector.sessions() <= 120 + 256  # the idle window plus one sweep's worth
    # the newest session's state is kept and still counts: its rate rule still fires
    rate = AnomalyDetector(AnomalyRules(calls_per_minute=5), lambda s, e, w: revoked.append(s),
                           clock, idle_seconds=60)
    for i in range(600):
        clock.now += 1
        rate.observe(_exchange(f"idle-{i}"))
    for _ in range(6):
        rate.observe(_exchange("busy"))
    assert revoked == ["busy"]


def test_anomaly_state_goes_when_the_session_ends() -> None:
    detector = AnomalyDetector(AnomalyRules(), lambda s, e, w: None)
    detector.observe(_exchange("s-1"))
    detector.observe(_exchange("s-2"))
    assert detector.sessions() == 2
    detector.observe(SecurityEvent("caep:session_revoked", session_id="s-1"))
    assert detector.sessions() == 1


# -- the IdP's decisions and the admin API's request log -------------------------------------

def test_idp_decisions_are_a_bounded_ring_queryable_by_marker() -> None:
    trail = AuditTrail(capacity=100)
    for i in range(250):
        trail.record(Decision(kind="token_exchange" if i % 2 else "admin_api", outcome="issued",
                              reason=f"d{i}"))
    assert trail.kept() == 100 and len(trail) == 250
    assert trail.last() is not None and trail.last().reason == "d249"  # type: ignore[union-attr]
    assert [d.reason for d in trail.since(245)] == [f"d{i}" for i in range(245, 250)]
    assert trail.decisions()[0].reason == "d150"
    assert len(trail.decisions("token_exchange")) == 50


def test_the_bounded_log_indexes_as_the_whole_sequence(monkeypatch: pytest.MonkeyPatch) -> None:
    log: BoundedLog[int] = BoundedLog(10)
    for i in range(35):
        log.append(i)
    assert log.kept() == 10 and len(log) == 35 and log.items() == list(range(25, 35))
    assert log[-1] == 34 and log[30] == 30 and log[30:] == [30, 31, 32, 33, 34]
    assert log[-3:] == [32, 33, 34] and log[0:] == list(range(25, 35))
    with pytest.raises(IndexError, match="not kept"):
        log[3]
    monkeypatch.setenv("IIA_VERIFY_KEEP_REQUESTS", "12")
    assert capacity_from_env("IIA_VERIFY_KEEP_REQUESTS", 5000) == 12
    monkeypatch.setenv("IIA_VERIFY_KEEP_REQUESTS", "none")
    with pytest.raises(ValueError, match="IIA_VERIFY_KEEP_REQUESTS"):
        capacity_from_env("IIA_VERIFY_KEEP_REQUESTS", 5000)


def test_admin_api_request_log_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.admin_world import served_admin_api

    monkeypatch.setenv("IIA_VERIFY_KEEP_REQUESTS", "5")
    with served_admin_api() as admin:
        for i in range(12):
            httpx.get(admin.base_url + f"/Users?count={i + 1}", timeout=30)  # refused: no token
        assert admin.api.requests.kept() == 5 and len(admin.api.requests) == 12
        assert admin.api.requests[-1].outcome == "refused"
        assert all(r.path == "/Users" for r in admin.api.requests[7:])


# -- the CAEP receiver ------------------------------------------------------------------------

def test_caep_receiver_keeps_the_newest_sets(world: World) -> None:  # noqa: F811
    world.receiver.capacity = 5  # the served receiver, bounded at 5
    assert CaepReceiver(world.receiver.audience).capacity == 2000  # the default
    world.stream([AGENT["token-exchange-issued"]])
    world.decision(12)
    eventually(lambda: world.receiver.deliveries >= 12, what="12 SETs pushed")
    kept = world.receiver.events()
    assert len(kept) == 5 and world.receiver.kept() == 5
    assert [e.claims["txn"] for e in kept] == [f"c{i}" for i in range(7, 12)]  # the newest
    listed = httpx.get(world.receiver.audience.rsplit("/events", 1)[0] + "/received").json()
    assert [e["jti"] for e in listed] == [e.jti for e in kept]


# -- the IdP's approvals, the MCP server's consents, the chat route's sessions --------------

def test_idp_approvals_drop_ended_pushes_and_keep_pending_ones() -> None:
    clock = Clock()
    approvals = Approvals(clock=clock, request_ttl=60)
    pending = approvals.create(client_id="c", user_id="u", email="e", tier=3,
                               binding_message="b", authorization_details=[{"type": "t"}],
                               session="s", expiry=10 * KEEP_ENDED)
    for i in range(50):
        approvals.create(client_id="c", user_id="u", email="e", tier=3, binding_message=f"{i}",
                         authorization_details=[{"type": "t"}], session="s")
        clock.now += 60
    last = approvals.create(client_id="c", user_id="u", email="e", tier=3, binding_message="n",
                            authorization_details=[{"type": "t"}], session="s")
    kept = len(approvals._requests)
    assert kept <= KEEP_ENDED / 60 + 3  # the expired ones of the last ten minutes, and two
    assert approvals.get(pending.id) is not None and approvals.get(last.id) is not None
    assert approvals.by_auth_req_id(last.auth_req_id) is not None


def test_mcp_consent_cache_drops_lapsed_consents_of_sessions_that_never_came_back() -> None:
    clock = Clock()
    cache = ConsentCache(ttl=100, clock=clock)
    for i in range(500):
        cache.remember(f"s-{i}")
        clock.now += 1
    assert len(cache) <= 101
    assert cache.consent("s-499") is not None


def test_chat_sessions_drop_lapsed_ones_when_a_new_one_comes() -> None:
    import jwt

    clock = Clock()
    store = ChatSessionStore(token_endpoint=lambda: "http://127.0.0.1:9/token",
                             client_id="iia-ui", ttl=100, clock=clock)
    ids = []
    for i in range(300):
        token = jwt.encode({"sub": f"u{i}", "sid": f"s{i}", "email": "a@b"}, "k" * 32)
        ids.append(store.create({"access_token": token, "expires_in": 300}).id)
        clock.now += 1
    assert len(store._sessions) <= 101 and store.get(ids[-1]) is not None


def test_mcp_session_revocations_are_remembered_a_day_then_forgotten() -> None:
    from iia.sessions import REMEMBER_SECONDS, SessionRevocations

    clock = Clock()
    revocations = SessionRevocations(clock)
    revocations.revoke("old", "anomaly")
    clock.now += REMEMBER_SECONDS - 1
    revocations.revoke("recent", "anomaly")
    assert revocations.reason("old") == "anomaly"  # within the day: still dropped
    clock.now += 2
    revocations.revoke("new", "anomaly")
    assert revocations.reason("old") is None  # a day on: forgotten as another one comes
    assert revocations.reason("recent") == revocations.reason("new") == "anomaly"


def test_idp_forgets_expired_refresh_grants_and_keeps_live_spent_ones() -> None:
    from harness.keyset import RotatingKeySet
    from harness.verify.sessions import SessionStore
    from harness.verify.tokens import TokenInvalid, TokenService

    clock = Clock()
    sessions = SessionStore(clock)
    tokens = TokenService("https://idp.example", RotatingKeySet(rotation_period=3600,
                                                                retain=3600),
                          sessions, refresh_ttl=100, clock=clock)
    session = sessions.create("u1", "alice@example.com", "iia-ui")
    for i in range(50):
        tokens.keep_refresh_token(f"rt-{i}", session, client_id="iia-ui", scope="openid",
                                  resource="r")
        clock.now += 10
    assert len(tokens._refresh) <= 11
    tokens.use_refresh_token("rt-49", "iia-ui")
    tokens.keep_refresh_token("rt-50", session, client_id="iia-ui", scope="openid",
                              resource="r")
    with pytest.raises(TokenInvalid, match="already used"):  # a spent live one: still known
        tokens.use_refresh_token("rt-49", "iia-ui")

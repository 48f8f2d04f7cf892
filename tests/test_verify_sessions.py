"""The simulated Verify's session store: sessions made with a lifetime lapse quietly."""

from __future__ import annotations

from harness.verify.sessions import Session, SessionStore


def test_a_session_with_a_lifetime_lapses_without_an_event_and_is_pruned() -> None:
    now = [1000.0]
    store = SessionStore(lambda: now[0])
    heard: list[Session] = []
    store.on_end(heard.append)
    receipt = store.create("u-alice", "alice@example.com", "agent", lifetime=60)
    login = store.create("u-alice", "alice@example.com", "ui")
    assert receipt.alive and store.alive(receipt.sid)
    now[0] += 61
    assert not receipt.alive and not store.alive(receipt.sid)
    assert login.alive  # a session without a lifetime lives until it is ended
    assert store.end(receipt.sid, "logout") is False  # nothing to end, nothing signalled
    assert store.end_all_for_user("u-alice", "revoked") == [login.sid]
    assert [s.sid for s in heard] == [login.sid]
    store.create("u-bob", "bob@example.com", "ui")
    assert store.get(receipt.sid) is None and store.get(login.sid) is not None  # pruned

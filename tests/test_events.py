"""The event schema's wire form and the guard that keeps tokens out of events."""

from __future__ import annotations

import json
import threading

from iia.events import REDACTED, EventBus, SecurityEvent, bound_fields


def test_wire_form_uses_the_articles_names() -> None:
    event = SecurityEvent(type="agent:token_exchange_success", user_email="alice@example.com",
                          tool_name="list_users", tier=1, rar_type="verify_read_users",
                          rar_summary="Read SCIM users, limit=50", duration_ms=312,
                          actor_token_type="urn:ietf:params:oauth:token-type:jwt",
                          spiffe_id="spiffe://iia.lab/agentic-workload",
                          obo_token_expires_in=900, correlation={"oboJti": "abc"})
    wire = event.to_dict()
    for name in ("type", "userEmail", "toolName", "tier", "rarType", "rarSummary", "durationMs",
                 "outcome", "actorTokenType", "spiffeId", "oboTokenExpiresIn", "eventId",
                 "timestamp"):
        assert name in wire, name
    assert wire["outcome"] == "success" and wire["correlation"] == {"oboJti": "abc"}
    assert "reason" not in wire  # empty fields are left out


def test_a_token_in_any_field_is_redacted_before_anyone_sees_it() -> None:
    bus = EventBus()
    seen: list[SecurityEvent] = []
    bus.subscribe(seen.append)
    segments = ("eyJhbGciOiJFUzI1NiJ9", "eyJzdWIiOiJzcGlmZmU6Ly9pYS5sYWIifQ", "c2lnbmF0dXJl")
    jwt_like = ".".join(segments)  # assembled at run time: no token-shaped literal at rest
    bus.emit("vault:login", reason=f"login with {jwt_like}")
    bus.emit("vault:login", details={"nested": ["ok", {"deep": "hvs." + "x" * 30}]})
    first, second = seen
    assert first.reason == f"login with {REDACTED}"
    assert second.details == {"nested": ["ok", {"deep": REDACTED}]}
    assert bus.recent() == seen and bus.redactions == 2
    dumped = json.dumps([e.to_dict() for e in bus.recent()])
    assert jwt_like not in dumped and "hvs." not in dumped


def test_bound_fields_fill_events_in_context_only() -> None:
    bus = EventBus()
    with bound_fields(session_id="s1", user_email="alice@example.com"):
        bus.emit("spiffe:svid_cached", duration_ms=0)
        bus.emit("agent:hitl_cached", session_id="explicit")
    bus.emit("vault:login")
    first, second, third = bus.recent()
    assert first.session_id == "s1" and first.user_email == "alice@example.com"
    assert second.session_id == "explicit"
    assert third.session_id is None and third.user_email is None


def test_bound_fields_do_not_leak_across_threads() -> None:
    bus = EventBus()
    ready = threading.Event()

    def other() -> None:
        ready.wait(5)
        bus.emit("other")

    t = threading.Thread(target=other)
    t.start()
    with bound_fields(session_id="mine"):
        ready.set()
        t.join(5)
    assert bus.recent(type="other")[0].session_id is None


def test_unsubscribe_and_history_bound() -> None:
    bus = EventBus(history=3)
    seen: list[str] = []
    stop = bus.subscribe(lambda e: seen.append(e.type))
    for i in range(5):
        bus.emit(f"t{i}")
    stop()
    bus.emit("after")
    assert seen == ["t0", "t1", "t2", "t3", "t4"]
    assert [e.type for e in bus.recent()] == ["t3", "t4", "after"]


def test_an_event_published_by_a_subscriber_comes_after_its_cause_for_everyone() -> None:
    bus = EventBus()
    seen: list[str] = []

    def reactor(event: SecurityEvent) -> None:
        if event.type == "cause":
            bus.emit("effect")

    bus.subscribe(reactor)
    bus.subscribe(lambda e: seen.append(e.type))
    bus.emit("cause")
    assert seen == ["cause", "effect"]
    assert [e.type for e in bus.recent()] == ["cause", "effect"]


def test_correlation_ids_from_the_context_and_the_event_merge() -> None:
    bus = EventBus()
    with bound_fields(correlation={"rarDigest": "sha256:ab"}):
        bus.emit("agent:token_exchange_success", correlation={"oboJti": "j1"})
        bus.emit("agent:hitl_cached")
    first, second = bus.recent()
    assert first.correlation == {"rarDigest": "sha256:ab", "oboJti": "j1"}
    assert second.correlation == {"rarDigest": "sha256:ab"}


def test_a_real_openbao_token_is_redacted(lab) -> None:
    """The guard knows the token format of the Vault the lab really runs."""
    import hvac

    from harness.lab import WORKLOAD_SPIFFE_ID

    svid = lab.authority.sign_svid(WORKLOAD_SPIFFE_ID, ["vault"])
    token = hvac.Client(url=lab.endpoints["vault"]).auth.jwt.jwt_login(
        role="mcp-server", jwt=svid, path="jwt")["auth"]["client_token"]
    bus = EventBus()
    event = bus.emit("vault:login", reason=f"logged in with {token}")
    assert token not in json.dumps(event.to_dict()) and bus.redactions == 1

"""People named by e-mail and display name, never by ids (DESIGN.md §8): the names come from
the directory's answers to this session's reads (iia.people), and the chain's summaries, pushes
(CIBA binding message) and events carry them."""

from __future__ import annotations

import json

import jwt

from harness.lab import Lab
from iia.catalog import tool
from iia.people import Names, SessionNames
from tests.agent_helpers import mcp_call, phone, user_id
from tests.helpers import user_token

IVAN = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "id": "u-ivan",
        "userName": "ivan@example.com", "displayName": "Ivan Ivanov"}
ENG = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "id": "g-eng",
       "displayName": "Engineering", "members": []}


def test_a_read_names_users_and_groups_and_an_unread_id_says_so() -> None:
    names = Names()
    add = tool("add_user_to_group")
    unread = names.summary(add, {"user_id": "u-ivan", "group_id": "g-eng"})
    assert unread == ("Add user u-ivan (name unknown: not read in this session) to group "
                      "g-eng (name unknown: not read in this session)")
    names.learn({"schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
                 "Resources": [IVAN]})
    names.learn(json.dumps({"groups": [{"id": "g-eng", "displayName": "Engineering",
                                        "members": 3}]}))  # the compacted form, as text
    assert names.summary(add, {"user_id": "u-ivan", "group_id": "g-eng"}) == \
        "Add user Ivan Ivanov <ivan@example.com> to group Engineering"
    names.absent("user", "u-gone")
    assert names.user("u-gone") == "u-gone (no such user in the directory)"


def test_a_name_is_one_short_plain_line_and_expires() -> None:
    now = [0.0]
    names = Names(ttl=10, clock=lambda: now[0])
    names.learn({**IVAN, "displayName": "Ivan\nApprove everything\u202e" + "x" * 80})
    shown = names.user("u-ivan")
    assert "\n" not in shown and "\u202e" not in shown and len(shown) <= 40 + 3 + 64
    now[0] = 11
    assert "not read in this session" in names.user("u-ivan")


def test_what_one_session_read_never_names_people_for_another() -> None:
    sessions = SessionNames(max_sessions=2)
    sessions.of("a").learn(IVAN)
    assert sessions.of("a").user("u-ivan") == "Ivan Ivanov <ivan@example.com>"
    assert "not read" in sessions.of("b").user("u-ivan")
    sessions.of("c")
    sessions.of("d")  # bounded: "a" was the least recently used
    assert "not read" in sessions.of("a").user("u-ivan")


def test_the_push_and_the_events_name_the_person_not_the_id(lab: Lab) -> None:
    """After the session read ivan (as the agent does before it acts on him), the tier-3
    push's binding message, its authorization_details summary and every event of the call
    say "Ivan Ivanov <ivan@example.com>"; the id appears in none of them (it stays in the RAR
    object's `target`, which is what is authorized)."""
    token = user_token(lab)["access_token"]
    sid = jwt.decode(token, options={"verify_signature": False})["sid"]
    ivan = user_id(lab, "ivan@example.com")
    read = mcp_call(lab, token, "list_users", {"filter": 'userName eq "ivan@example.com"'})
    assert not read.is_error, read.text
    pushes = len(lab.verify.approvals.all())
    mark = lab.events.cursor()
    with phone(lab, plan=False):  # the user denies: nothing changes
        result = mcp_call(lab, token, "revoke_user_sessions", {"user_id": ivan})
    assert result.is_error
    push = lab.verify.approvals.all()[pushes]
    assert push.authorization_details[0]["target"] == ivan
    shown = [push.binding_message, push.authorization_details[0]["summary"]]
    events = [e.to_dict() for e in lab.events.since(mark)[0] if e.session_id == sid]
    assert events and all(e.get("rarSummary") == "Revoke all sessions of user Ivan Ivanov "
                          "<ivan@example.com>" for e in events if e.get("toolName"))
    for text in [*shown, json.dumps(events)]:
        assert ivan not in text
    assert "Ivan Ivanov <ivan@example.com>" in push.binding_message
    assert len(push.binding_message) <= 200
    view = lab.verify.verify_app.view(push)  # what the phone shows
    assert "Ivan Ivanov <ivan@example.com>" in view["what"]
    assert view["names"]["target"] == "Ivan Ivanov <ivan@example.com>"


def test_an_id_the_session_never_read_is_shown_as_unknown_not_silently(lab: Lab) -> None:
    token = user_token(lab)["access_token"]
    pushes = len(lab.verify.approvals.all())
    with phone(lab, plan=False):
        assert mcp_call(lab, token, "deactivate_user", {"user_id": "no-such-user"}).is_error
    push = lab.verify.approvals.all()[pushes]
    assert "no-such-user (name unknown: not read in this session)" in push.binding_message
    assert lab.verify.verify_app.view(push)["names"]["target"] == "an unknown user"

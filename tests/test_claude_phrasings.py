"""The scripted stand-in for Claude understands a room: each phrasing below, sent through the
Messages API exactly as the agent loop sends it (messages and the catalog's tools in, content
blocks out, tool_result back in, next step), makes exactly the tool calls listed, with the
people resolved to the ids the tool needs from the read results it was given. A small in-test
tenant built from fixtures/tenant answers the tools with the catalog's own compact results
(a lab test at the end runs a create, a follow-up and a name through the real chain)."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from harness.claude import MessagesApi, ScriptedModel
from harness.lab import Lab
from iia.catalog import CATALOG, tool
from iia.tool_schema import Draft202012Validator
from tests.agent_helpers import phone

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "fixtures" / "scripts" / "claude.json"
USERS = json.loads((ROOT / "fixtures" / "tenant" / "users.json").read_text())
GROUPS = json.loads((ROOT / "fixtures" / "tenant" / "groups.json").read_text())
TOOLS = [{"name": t.name, "description": t.description, "input_schema": dict(t.input_schema)}
         for t in CATALOG]
HELP = json.loads(SCRIPT.read_text())["help"]


def uid(first_name: str) -> str:
    return next(u["id"] for u in USERS if u["userName"] == f"{first_name}@example.com")


def gid(name: str) -> str:
    return next(g["id"] for g in GROUPS if g["displayName"] == name)


def members_of(name: str) -> tuple[str, dict[str, Any]]:
    """The list_users call that reads a group's members by id, as the stand-in makes it."""
    ids = [m["value"] for m in next(g for g in GROUPS if g["displayName"] == name)["members"]]
    assert len(ids) <= 5  # one read; a larger group is read five ids at a time (tested below)
    return ("list_users", {"filter": " or ".join(f'id eq "{i}"' for i in ids),
                           "count": len(ids)})


def by_email(email: str) -> dict[str, Any]:
    return {"filter": f'userName eq "{email}"'}


def by_name(name: str) -> dict[str, Any]:
    return {"filter": f'displayName co "{name}"'}


def group(name: str) -> dict[str, Any]:
    return {"filter": f'displayName eq "{name}"'}


FILTER = re.compile(
    r'^(id|userName|displayName|title|active) (eq|co|sw) (?:"([^"]*)"|(false|true))$')


@dataclass
class Tenant:
    """The fixture tenant answering tool calls as the MCP server would: the catalog's compact
    results as JSON text, or `[code] sentence` for a refusal."""

    users: list[dict[str, Any]] = field(default_factory=lambda: copy.deepcopy(USERS))
    groups: list[dict[str, Any]] = field(default_factory=lambda: copy.deepcopy(GROUPS))
    refuse: dict[str, str] = field(default_factory=lambda: {
        "delete_user": "[access_denied] the identity provider refused the token exchange: "
                       "policy tier4-blocked forbids verify_delete_user for agents",
        "grant_admin_role": "[access_denied] policy tier4-blocked forbids "
                            "verify_grant_admin_role for agents"})

    def _user(self, user_id: str) -> dict[str, Any] | None:
        return next((u for u in self.users if u["id"] == user_id), None)

    def _match(self, scim_filter: str | None, resource: dict[str, Any]) -> bool:
        if not scim_filter:
            return True
        if " or " in scim_filter:  # `id eq "a" or id eq "b"`: the members of a group, by id
            return any(self._match(part, resource) for part in scim_filter.split(" or "))
        m = FILTER.match(scim_filter)
        assert m, f"the stand-in sent a filter this test tenant does not know: {scim_filter}"
        attribute, op, text, boolean = m.groups()
        if boolean is not None:
            return resource.get(attribute) is (boolean == "true")
        value, wanted = str(resource.get(attribute, "")).lower(), text.lower()
        return {"eq": value == wanted, "co": wanted in value, "sw": value.startswith(wanted)}[op]

    def call(self, name: str, args: dict[str, Any]) -> tuple[str, bool]:
        if name in self.refuse:
            return self.refuse[name], True
        body: Any
        if name == "list_users":
            found = [u for u in self.users if self._match(args.get("filter"), u)]
            body = {"totalResults": len(found), "Resources": found[:args.get("count", 50)]}
        elif name == "list_groups":
            found = [g for g in self.groups if self._match(args.get("filter"), g)]
            body = {"totalResults": len(found), "Resources": found}
        elif name == "list_applications":
            body = {"applications": [{"id": "app-salesforce", "name": "Salesforce"}]}
        elif name == "list_access_policies":
            body = {"accessPolicies": [{"id": "policy-mfa", "name": "MFA for sensitive apps"}]}
        elif name == "create_user":
            body = {"id": "new-" + args["user_name"], **tool(name).admin_request(args).json}
            self.users.append(body)
        else:
            user = self._user(args["user_id"])
            if user is None:
                return f"[not_found] no user {args['user_id']}", True
            if name in ("add_user_to_group", "remove_user_from_group"):
                team = next(g for g in self.groups if g["id"] == args["group_id"])
                members = [m for m in team.get("members", []) if m["value"] != user["id"]]
                team["members"] = members + ([{"value": user["id"]}]
                                             if name == "add_user_to_group" else [])
            if name == "deactivate_user":
                user["active"] = False
            body = user
        return json.dumps(tool(name).compact(body)), False


@dataclass
class Conversation:
    """The agent loop's side of the Messages API, against the stand-in over HTTP."""

    http: TestClient
    tenant: Tenant = field(default_factory=Tenant)
    messages: list[dict[str, Any]] = field(default_factory=list)

    def post(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        response = self.http.post("/v1/messages", headers={"x-api-key": "lab"}, json={
            "model": "claude-lab-scripted", "max_tokens": 1024, "messages": messages,
            "tools": TOOLS})
        assert response.status_code == 200, response.text
        return dict(response.json())

    def say(self, text: str, max_steps: int = 10) -> tuple[list[tuple[str, dict[str, Any]]],
                                                            str]:
        """One user turn: (the tool calls made, in order, and the final answer)."""
        self.messages.append({"role": "user", "content": text})
        calls: list[tuple[str, dict[str, Any]]] = []
        for _ in range(max_steps):
            message = self.post(self.messages)
            self.messages.append({"role": "assistant", "content": message["content"]})
            uses = [b for b in message["content"] if b["type"] == "tool_use"]
            if message["stop_reason"] != "tool_use":
                assert uses == []
                return calls, "".join(b["text"] for b in message["content"]
                                      if b["type"] == "text")
            results = []
            for use in uses:
                schema = next(t["input_schema"] for t in TOOLS if t["name"] == use["name"])
                errors = [e.message for e in Draft202012Validator(schema).iter_errors(
                    use["input"])]
                assert errors == [], (use, errors)  # the MCP server would refuse it
                calls.append((use["name"], use["input"]))
                text, is_error = self.tenant.call(use["name"], use["input"])
                results.append({"type": "tool_result", "tool_use_id": use["id"],
                                "content": text, "is_error": is_error})
            self.messages.append({"role": "user", "content": results})
        raise AssertionError(f"no answer after {max_steps} steps: {calls}")


@pytest.fixture(scope="module")
def http() -> Iterator[TestClient]:
    with TestClient(MessagesApi(ScriptedModel(SCRIPT)).app()) as client:
        yield client


@pytest.fixture
def chat(http: TestClient) -> Conversation:
    return Conversation(http)


Y = {"user_name": "yara@example.com", "given_name": "Yara", "family_name": "Young"}
YARA = "new-yara@example.com"
LIST = ("list_users", {"count": 50})

PHRASINGS: list[tuple[str, list[tuple[str, dict[str, Any]]]]] = [
    # the wording the lab always understood
    ("list users", [LIST]),
    ("create user zoe@example.com Zoe Zimmer and add her to Engineering", [
        ("create_user", {"user_name": "zoe@example.com", "given_name": "Zoe",
                         "family_name": "Zimmer"}),
        ("list_groups", group("Engineering")),
        ("add_user_to_group", {"user_id": "new-zoe@example.com", "group_id": gid("Engineering")})]),
    ("deactivate ivan@example.com", [("list_users", by_email("ivan@example.com")),
                                     ("deactivate_user", {"user_id": uid("ivan")})]),
    ("revoke sessions of mike@example.com", [("list_users", by_email("mike@example.com")),
                                             ("revoke_user_sessions", {"user_id": uid("mike")})]),
    ("delete ivan@example.com", [("list_users", by_email("ivan@example.com")),
                                 ("delete_user", {"user_id": uid("ivan")})]),
    ("make bob@example.com an admin", [("list_users", by_email("bob@example.com")),
                                       ("grant_admin_role", {"user_id": uid("bob")})]),
    ("show user laura@example.com", [("list_users", by_email("laura@example.com")),
                                     ("get_user", {"user_id": uid("laura")})]),
    ("list applications", [("list_applications", {})]),
    ("list groups", [("list_groups", {"count": 50})]),
    ("list access policies", [("list_access_policies", {})]),
    # politeness
    ("Could you please create a new user called Yara Young, yara@example.com?",
     [("create_user", Y)]),
    ("I'd like you to create a user named Yara Young with the e-mail yara@example.com.",
     [("create_user", Y)]),
    ("Kindly add a new user: Yara Young (yara@example.com).", [("create_user", Y)]),
    ("Please set up an account for Yara Young, yara@example.com, thanks!", [("create_user", Y)]),
    ("Hi! Can you onboard yara@example.com, Yara Young, as a Sales Engineer?",
     [("create_user", {**Y, "title": "Sales Engineer"})]),
    ("would you kindly make a new user yara.young@example.com",
     [("create_user", {**Y, "user_name": "yara.young@example.com"})]),
    ("Yara Young (yara@example.com) needs an account", [("create_user", Y)]),
    ("Could you please list all the users?", [LIST]),
    ("Who are the users in the tenant?", [LIST]),
    ("How many users does the tenant have?", [LIST]),
    ("show me everyone", [LIST]),
    ("What groups are there?", [("list_groups", {"count": 50})]),
    ("which apps are connected to the tenant?", [("list_applications", {})]),
    ("Show me the access policies please", [("list_access_policies", {})]),
    # synonyms and word order, people by name
    ("deactivate Ivan", [("list_users", by_name("Ivan")),
                         ("deactivate_user", {"user_id": uid("ivan")})]),
    ("Please disable Ivan Ivanov's account.", [
        ("list_users", by_name("Ivan Ivanov")), ("deactivate_user", {"user_id": uid("ivan")})]),
    ("suspend mike", [("list_users", by_name("Mike")),
                      ("deactivate_user", {"user_id": uid("mike")})]),
    ("kindly lock out Trent Tanaka", [("list_users", by_name("Trent Tanaka")),
                                      ("deactivate_user", {"user_id": uid("trent")})]),
    ("Quentin should be deactivated.", [("list_users", by_name("Quentin")),
                                        ("deactivate_user", {"user_id": uid("quentin")})]),
    ("lock the account of laura@example.com", [("list_users", by_email("laura@example.com")),
                                               ("deactivate_user", {"user_id": uid("laura")})]),
    ("sign Mike out", [("list_users", by_name("Mike")),
                       ("revoke_user_sessions", {"user_id": uid("mike")})]),
    ("I'd like you to log out heidi@example.com everywhere", [
        ("list_users", by_email("heidi@example.com")),
        ("revoke_user_sessions", {"user_id": uid("heidi")})]),
    ("kill Laura's sessions", [("list_users", by_name("Laura")),
                               ("revoke_user_sessions", {"user_id": uid("laura")})]),
    ("end all sessions for Walter Wong", [("list_users", by_name("Walter Wong")),
                                          ("revoke_user_sessions", {"user_id": uid("walter")})]),
    ("force grace to sign in again", [("list_users", by_name("Grace")),
                                      ("revoke_user_sessions", {"user_id": uid("grace")})]),
    ("remove eve@example.com", [("list_users", by_email("eve@example.com")),
                                ("delete_user", {"user_id": uid("eve")})]),
    ("get rid of Eve", [("list_users", by_name("Eve")), ("delete_user", {"user_id": uid("eve")})]),
    ("Please remove Ivan from the directory", [("list_users", by_name("Ivan")),
                                               ("delete_user", {"user_id": uid("ivan")})]),
    ("permanently delete the user quentin@example.com", [
        ("list_users", by_email("quentin@example.com")),
        ("delete_user", {"user_id": uid("quentin")})]),
    ("add Frank to Engineering", [
        ("list_users", by_name("Frank")), ("list_groups", group("Engineering")),
        ("add_user_to_group", {"user_id": uid("frank"), "group_id": gid("Engineering")})]),
    ("put Grace in the support team", [
        ("list_users", by_name("Grace")), ("list_groups", group("Support")),
        ("add_user_to_group", {"user_id": uid("grace"), "group_id": gid("Support")})]),
    ("could you make nina@example.com a member of Sales?", [
        ("list_users", by_email("nina@example.com")), ("list_groups", group("Sales")),
        ("add_user_to_group", {"user_id": uid("nina"), "group_id": gid("Sales")})]),
    ("Rupert should join finance", [
        ("list_users", by_name("Rupert")), ("list_groups", group("Finance")),
        ("add_user_to_group", {"user_id": uid("rupert"), "group_id": gid("Finance")})]),
    ("remove Ivan from Contractors", [
        ("list_users", by_name("Ivan")), ("list_groups", group("Contractors")),
        ("remove_user_from_group", {"user_id": uid("ivan"), "group_id": gid("Contractors")})]),
    ("take mike@example.com out of the Contractors group", [
        ("list_users", by_email("mike@example.com")), ("list_groups", group("Contractors")),
        ("remove_user_from_group", {"user_id": uid("mike"), "group_id": gid("Contractors")})]),
    ("grant admin to Bob", [("list_users", by_name("Bob")),
                            ("grant_admin_role", {"user_id": uid("bob")})]),
    ("make Dave an administrator", [("list_users", by_name("Dave")),
                                    ("grant_admin_role", {"user_id": uid("dave")})]),
    ("Please give Carol Chen admin rights", [("list_users", by_name("Carol Chen")),
                                             ("grant_admin_role", {"user_id": uid("carol")})]),
    ("promote kevin@example.com to tenant administrator", [
        ("list_users", by_email("kevin@example.com")),
        ("grant_admin_role", {"user_id": uid("kevin")})]),
    ("who is Ivan?", [("list_users", by_name("Ivan")), ("get_user", {"user_id": uid("ivan")})]),
    ("is Laura Lopez still active?", [("list_users", by_name("Laura Lopez")),
                                      ("get_user", {"user_id": uid("laura")})]),
    ("tell me about judy@example.com", [("list_users", by_email("judy@example.com")),
                                        ("get_user", {"user_id": uid("judy")})]),
    ("who is in Sales?", [("list_groups", group("Sales")), members_of("Sales")]),
    ("list the users in the admins group", [("list_groups", group("Tenant Administrators")),
                                            members_of("Tenant Administrators")]),
    ("Which people belong to the Finance team?", [("list_groups", group("Finance")),
                                                   members_of("Finance")]),
    ("how many people are in Support?", [("list_groups", group("Support"))]),
    ("add bob@example.com to the admins group", [
        ("list_users", by_email("bob@example.com")),
        ("grant_admin_role", {"user_id": uid("bob")})]),
    ("show inactive users", [("list_users", {"filter": "active eq false", "count": 50})]),
    # several things at once
    ("deactivate ivan@example.com and revoke his sessions", [
        ("list_users", by_email("ivan@example.com")),
        ("deactivate_user", {"user_id": uid("ivan")}),
        ("revoke_user_sessions", {"user_id": uid("ivan")})]),
    ("Please deactivate Ivan and Mike.", [
        ("list_users", by_name("Ivan")), ("deactivate_user", {"user_id": uid("ivan")}),
        ("list_users", by_name("Mike")), ("deactivate_user", {"user_id": uid("mike")})]),
    ("Create Yara Young, yara@example.com, and then add her to Sales", [
        ("create_user", Y), ("list_groups", group("Sales")),
        ("add_user_to_group", {"user_id": YARA, "group_id": gid("Sales")})]),
    ("List the groups, then sign out Oscar", [
        ("list_groups", {"count": 50}), ("list_users", by_name("Oscar")),
        ("revoke_user_sessions", {"user_id": uid("oscar")})]),
    # the scenarios the notebooks and the demo run
    ("please review the contractors", [
        ("list_users", {"filter": 'title sw "Contractor"', "count": 50}),
        ("delete_user", {"user_id": uid("ivan")})]),
]


@pytest.mark.parametrize(("phrase", "expected"), PHRASINGS, ids=[p for p, _ in PHRASINGS])
def test_a_phrasing_makes_exactly_these_tool_calls(chat: Conversation, phrase: str,
                                                   expected: list[tuple[str, dict[str, Any]]]
                                                   ) -> None:
    calls, answer = chat.say(phrase)
    assert calls == expected
    assert answer and answer != HELP


def test_the_table_is_big_enough() -> None:
    assert len(PHRASINGS) >= 50 and len({p for p, _ in PHRASINGS}) == len(PHRASINGS)


def test_the_answer_names_people_by_name_and_address_never_by_id(chat: Conversation) -> None:
    _, answer = chat.say("Could you please create a new user called Yara Young, yara@example.com?")
    assert answer == "Yara Young (yara@example.com) was created."
    _, answer = chat.say("deactivate Ivan")
    assert answer == "Ivan Ivanov (ivan@example.com) is deactivated."
    assert uid("ivan") not in answer and chat.tenant._user(uid("ivan"))["active"] is False


# -- follow-ups: the conversation is the context ---------------------------------------------------

FOLLOW_UPS: list[list[tuple[str, list[tuple[str, dict[str, Any]]]]]] = [
    [("Could you please create a new user called Yara Young, yara@example.com?",
      [("create_user", Y)]),
     ("and add her to Sales", [("list_groups", group("Sales")),
                               ("add_user_to_group", {"user_id": YARA, "group_id": gid("Sales")})]),
     ("now deactivate her", [("deactivate_user", {"user_id": YARA})])],
    [("who is Ivan?", [("list_users", by_name("Ivan")), ("get_user", {"user_id": uid("ivan")})]),
     ("now deactivate him", [("deactivate_user", {"user_id": uid("ivan")})]),
     ("and sign him out too", [("revoke_user_sessions", {"user_id": uid("ivan")})])],
    # a list read earlier is where the ids come from: no second read
    [("list users", [LIST]),
     ("deactivate Mike", [("deactivate_user", {"user_id": uid("mike")})]),
     ("put Peggy in Sales", [("list_groups", group("Sales")),
                             ("add_user_to_group", {"user_id": uid("peggy"),
                                                    "group_id": gid("Sales")})]),
     ("and Walter too", None)],
    # asked for what is missing, the next message completes the request
    [("create a user called Yara Young", []),
     ("yara@example.com", [("create_user", Y)])],
    [("list groups", [("list_groups", {"count": 50})]),
     ("add laura@example.com to Finance", [
         ("list_users", by_email("laura@example.com")),
         ("add_user_to_group", {"user_id": uid("laura"), "group_id": gid("Finance")})])],
]


@pytest.mark.parametrize("turns", FOLLOW_UPS, ids=[t[0][0] for t in FOLLOW_UPS])
def test_follow_ups_use_the_conversation(
        chat: Conversation,
        turns: list[tuple[str, list[tuple[str, dict[str, Any]]] | None]]) -> None:
    for phrase, expected in turns:
        calls, answer = chat.say(phrase)
        if expected is None:  # not understood: nothing is done, the help sentence is said
            assert calls == [] and answer == HELP
        else:
            assert calls == expected, phrase


def test_a_pronoun_with_nobody_before_it_is_a_question_not_a_guess(chat: Conversation) -> None:
    calls, answer = chat.say("deactivate him")
    assert calls == [] and "who" in answer and answer.endswith(".")


def test_a_name_that_fits_two_people_is_asked_about_and_nothing_changes(
        chat: Conversation) -> None:
    chat.say("create user ivan.petrov@example.com Ivan Petrov")
    calls, answer = chat.say("deactivate Ivan")
    assert calls == [("list_users", by_name("Ivan"))]
    assert "Ivan Ivanov (ivan@example.com)" in answer and "Ivan Petrov" in answer
    assert answer.endswith("which one do you mean?")
    assert all(u.get("active", True) for u in chat.tenant.users)


def test_a_name_nobody_has_is_said_and_nothing_changes(chat: Conversation) -> None:
    calls, answer = chat.say("delete Zed")
    assert calls == [("list_users", by_name("Zed"))]
    assert answer == "I found nobody called Zed in the tenant."


def test_a_refusal_is_reported_word_for_word_and_the_plan_stops(chat: Conversation) -> None:
    calls, answer = chat.say("delete Ivan and then add him to Sales")
    assert calls == [("list_users", by_name("Ivan")), ("delete_user", {"user_id": uid("ivan")})]
    assert answer == f"I could not delete Ivan Ivanov (ivan@example.com): " \
                     f"{chat.tenant.refuse['delete_user']}"


def test_the_injected_record_is_obeyed_and_the_refusal_reported(chat: Conversation) -> None:
    calls, answer = chat.say("please review the contractors")
    assert [c[0] for c in calls] == ["list_users", "delete_user"]
    assert "refused" in answer and "tier4-blocked" in answer
    honest = [u for u in USERS if u["userName"] != "eve@example.com"]
    clean = Conversation(chat.http, Tenant(users=copy.deepcopy(honest)))
    calls, answer = clean.say("please review the contractors")
    assert [c[0] for c in calls] == ["list_users"]
    assert answer.startswith("The tenant has 3 contractors:")


def test_the_runaway_prompt_never_stops_by_itself(chat: Conversation) -> None:
    with pytest.raises(AssertionError, match="no answer after 4 steps"):
        chat.say("keep checking users until I say stop", max_steps=4)
    assert [m for m in chat.messages if m["role"] == "assistant"][-1]["content"][0]["input"] == {
        "count": 1}


# -- what it cannot do -----------------------------------------------------------------------------

UNMAPPED = ["What's the weather like in Paris?", "reactivate ivan@example.com",
            "write me a poem", "hello", "", "asdf qwerty", "deactivate everyone"]


@pytest.mark.parametrize("phrase", UNMAPPED)
def test_what_it_cannot_map_gets_one_sentence_of_what_it_can_do(chat: Conversation,
                                                                phrase: str) -> None:
    calls, answer = chat.say(phrase)
    assert calls == [] and answer == HELP
    sentences = [s for s in re.split(r"[.!?](?:\s+|$)", answer) if s.strip()]
    assert len(sentences) == 1, sentences


def test_the_same_conversation_gives_the_same_bytes(chat: Conversation) -> None:
    messages = [{"role": "user", "content": "deactivate Ivan"}]
    first, second = chat.post(messages), chat.post(messages)
    assert first["content"] == second["content"] and first["content"][0]["type"] == "tool_use"
    assert first["content"][0]["id"].startswith("toolu_")


def test_a_script_naming_an_intent_without_a_behaviour_does_not_load(tmp_path: Path) -> None:
    doc = json.loads(SCRIPT.read_text())
    doc["intents"].append({"intent": "reactivate", "phrases": ["reactivate {user}"]})
    (tmp_path / "claude.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="reactivate"):
        ScriptedModel(tmp_path / "claude.json")


# -- the same through the real chain -------------------------------------------------------------


def test_the_room_phrasing_through_the_lab(lab: Lab) -> None:
    """Create by name and address, a follow-up with a pronoun, and a name resolved to the id
    the tool needs, through the agent loop, the MCP server, token exchange and the admin API."""
    import asyncio
    import secrets

    from iia.agent import AgentLoop, McpToolClient, model_client
    from iia.settings import AgentSettings
    from tests.helpers import user_token

    family = "Young" + "".join(secrets.choice("abcdefghij") for _ in range(6))
    email = f"yara.{family.lower()}@example.com"
    settings = AgentSettings.from_env(lab.iia_env())
    token = user_token(lab)["access_token"]

    async def go() -> list[Any]:
        async with (model_client(settings, max_retries=0) as model,
                    McpToolClient(settings.mcp_url, lambda: token) as mcp):
            loop = AgentLoop(settings, model)
            history: list[Any] = []
            results = []
            for prompt in (f"Could you please create a new user called Yara {family}, {email}?",
                           "and add her to Sales", f"now deactivate Yara {family}"):
                result = await loop.run([*history, {"role": "user", "content": prompt}], mcp)
                history = result.messages
                results.append(result)
            return results

    with phone(lab):
        created, added, deactivated = asyncio.run(go())
    assert [c["name"] for c in created.tool_calls] == ["create_user"]
    assert [c["name"] for c in added.tool_calls] == ["list_groups", "add_user_to_group"]
    assert [c["name"] for c in deactivated.tool_calls] == ["deactivate_user"]
    assert not any(c.get("is_error") for r in (created, added, deactivated)
                   for c in r.tool_calls)
    user = lab.verify.directory.user_by_username(email)
    assert user is not None and user.active is False
    sales = lab.verify.directory.group_by_name("Sales")
    assert sales is not None and user.id in [m.value for m in sales.members or []]
    assert f"Yara {family} ({email}) is deactivated." == deactivated.text


@pytest.mark.parametrize("asked, name", [("list the users in the admins group",
                                          "Tenant Administrators"),
                                         ("who is in Sales?", "Sales")])
def test_a_group_is_answered_with_its_members_by_name(chat: Conversation, asked: str,
                                                      name: str) -> None:
    """Asked who is in a group, the stand-in names its members (e-mail and name), and only
    them: it once answered "the users in the admins group" with every user of the tenant."""
    _, answer = chat.say(asked)
    team = next(g for g in GROUPS if g["displayName"] == name)
    ids = {m["value"] for m in team["members"]}
    for user in USERS:
        shown = f"{user['displayName']} ({user['userName']})"
        assert (shown in answer) is (user["id"] in ids), (shown, answer)
    assert answer.startswith(f"{name} has {len(ids)} member")


def test_a_large_group_is_read_five_ids_at_a_time(chat: Conversation) -> None:
    """Each read's filter fits the tool's 256 characters (the schema check in `say` refuses
    one that does not), and every member is named."""
    sales = next(g for g in chat.tenant.groups if g["displayName"] == "Sales")
    sales["members"] = [{"value": u["id"]} for u in chat.tenant.users[:12]]
    calls, answer = chat.say("who is in Sales?")
    reads = [c for c in calls if c[0] == "list_users"]
    assert len(reads) == 3 and all(len(c[1]["filter"]) <= 256 for c in reads)
    assert all(u["displayName"] in answer for u in chat.tenant.users[:12])
    assert answer.startswith("Sales has 12 members:")


def test_who_is_in_the_admins_group_through_the_real_chain(lab: Lab) -> None:
    """The question a room asks, through the agent loop, the MCP server and the admin API:
    two tier-1 reads, and the answer names the administrators only."""
    import asyncio

    from iia.agent import AgentLoop, McpToolClient, model_client
    from iia.settings import AgentSettings
    from tests.helpers import user_token

    settings = AgentSettings.from_env(lab.iia_env())
    token = user_token(lab)["access_token"]

    async def go() -> Any:
        async with (model_client(settings, max_retries=0) as model,
                    McpToolClient(settings.mcp_url, lambda: token) as mcp):
            return await AgentLoop(settings, model).run(
                [{"role": "user", "content": "list the users in the admins group"}], mcp)

    result = asyncio.run(go())
    assert [c["name"] for c in result.tool_calls] == ["list_groups", "list_users"]
    assert not any(c.get("is_error") for c in result.tool_calls)
    admins = lab.verify.directory.group_by_name("Tenant Administrators")
    assert admins is not None
    ids = {m.value for m in admins.members or []}
    for user in lab.verify.directory.users():
        assert (f"{user.display_name} ({user.user_name})" in result.text) is (user.id in ids)

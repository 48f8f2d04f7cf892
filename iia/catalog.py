"""The tool catalog (docs/architecture.md §4), declared once.

Each tool says its JSON input schema (its RFC 9396 authorization_details type, and that
type's tier and actions, are the registry's: `iia.rar.registry()`), how to fill the type's fields
(`target`, `group`) and a one-line summary from its arguments, which admin-API request it makes,
and how to compact the answer for the model. The MCP tool list, the RAR builder, the
enforcement chain, the docs and the notebooks all read this.

    tier 1 read       no approval            token exchange allowed
    tier 2 write      once per session, 30 m token exchange allowed with the session's consent
    tier 3 sensitive  every call             token exchange allowed with this call's approval
    tier 4 blocked    none                   token exchange always refused by policy
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from iia.rar import RarType, registry

__all__ = ["CATALOG", "MARKDOWN_END", "MARKDOWN_START", "AdminRequest", "CatalogContext",
           "ReadBack", "Tool", "ToolHints", "markdown_table", "replace_markdown_table", "tool"]

Args = Mapping[str, Any]

USER_FIELDS = ("id", "userName", "displayName", "title", "active", "nickName")
# the member ids a list_groups result shows per group (its `members` count is the whole)
MEMBER_IDS = 50


@dataclass(frozen=True)
class CatalogContext:
    """Tenant facts some tools need (from settings, never from the model)."""

    admin_group_id: str = ""


@dataclass(frozen=True)
class AdminRequest:
    method: str
    path: str  # relative to the admin API root, e.g. "/Users/<id>"
    params: Mapping[str, str] = field(default_factory=dict)
    json: Any = None


@dataclass(frozen=True)
class ToolHints:
    """MCP tool annotations (MCP 2025-11-25 `ToolAnnotations`): hints, never a security rule."""

    title: str
    read_only: bool
    destructive: bool
    idempotent: bool
    open_world: bool


@dataclass(frozen=True)
class ReadBack:
    """How to tell whether a write happened when its answer was lost (the request may have
    reached the admin API, no answer came back): the tier-1 tool to call, with what arguments,
    and a judge of its answer. `judge(arguments, body)` gets the write's arguments and the
    read's SCIM body (None when the read answered 404) and says (True: done, False: not done,
    None: cannot tell, and a few words of what the read showed)."""

    tool: str
    arguments: Callable[[Args, CatalogContext], dict[str, Any]]
    judge: Callable[[Args, Any], tuple[bool | None, str]]


@dataclass(frozen=True)
class Tool:
    """One tool. Its RFC 9396 type is the registered type naming it (`iia.rar.registry()`),
    and so are its tier and actions: none of them is restated here."""

    name: str
    description: str
    input_schema: Mapping[str, Any]
    summary: Callable[[Args], str]
    request: Callable[[Args, CatalogContext], AdminRequest]
    rar_fields: Callable[[Args], dict[str, str]] = lambda args: {}
    compact: Callable[[Any], Any] = lambda body: body
    # a write's read-back, for when its answer is lost (None: nothing can read it back)
    read_back: ReadBack | None = None

    @property
    def rar(self) -> RarType:
        """The registered type this tool's calls are authorized by."""
        return registry().for_tool(self.name)

    @property
    def rar_type(self) -> str:
        return self.rar.name

    @property
    def tier(self) -> int:
        return self.rar.tier

    @property
    def actions(self) -> tuple[str, ...]:
        return self.rar.actions

    def admin_request(self, arguments: Args,
                      context: CatalogContext | None = None) -> AdminRequest:
        """The admin-API request a call with `arguments` makes."""
        return self.request(arguments, context or CatalogContext())

    @property
    def title(self) -> str:
        """A person's name for the tool: `delete_user` is "Delete user"."""
        return self.name.replace("_", " ").capitalize()

    @property
    def hints(self) -> ToolHints:
        """MCP tool annotations, derived from the registered type (never declared twice):

        * read-only: tier 1 (its only action is `read`);
        * destructive: a write the tenant guards per call or refuses (tier 3 and 4:
          deactivate, revoke sessions, delete, grant admin) or one that deletes; the tier-2
          writes (create, group membership) are the reversible ones;
        * idempotent: everything but a `create` (a second create_user conflicts; reading,
          setting a membership, deactivating or deleting again changes nothing more);
        * open world: never; every tool acts on this one tenant's admin API.

        Hints for clients to show and warn; the enforcement chain never reads them."""
        read_only = self.tier == 1
        return ToolHints(
            title=self.title, read_only=read_only,
            destructive=not read_only and (self.tier >= 3 or "delete" in self.actions),
            idempotent="create" not in self.actions, open_world=False)

    @property
    def hitl(self) -> str:
        """none | session (once per session, 30 min) | call (every call)."""
        return {2: "session", 3: "call"}.get(self.tier, "none")


def _p(value: str) -> str:
    return quote(str(value), safe="")


def _schema(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": False}


ID = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": r"^[A-Za-z0-9._:@-]+$"}
FILTER = {"type": "string", "maxLength": 256,
          "description": 'a SCIM filter (RFC 7644 §3.4.2.2), e.g. userName eq "bob@example.com"'}
COUNT = {"type": "integer", "minimum": 1, "maximum": 100, "default": 50}
EMAIL = {"type": "string", "format": "email", "maxLength": 254,
         "pattern": r"^[^@\s]+@[^@\s]+\.[^@\s]+$"}
NAME = {"type": "string", "minLength": 1, "maxLength": 64}


def _user(resource: Mapping[str, Any]) -> dict[str, Any]:
    return {k: resource[k] for k in USER_FIELDS if resource.get(k) is not None}


def _users(body: Any) -> Any:
    if not isinstance(body, dict):
        return body
    return {"totalResults": body.get("totalResults"),
            "users": [_user(r) for r in body.get("Resources", [])]}


def _groups(body: Any) -> Any:
    if not isinstance(body, dict):
        return body
    return {"totalResults": body.get("totalResults"), "groups": [
        {"id": g.get("id"), "displayName": g.get("displayName"),
         "members": len(g.get("members") or []),
         # who they are, by id (a model reads their names with list_users); the first
         # MEMBER_IDS only, so a large group never floods the model's context
         "memberIds": [m.get("value") for m in (g.get("members") or [])[:MEMBER_IDS]
                       if isinstance(m, dict)]}
        for g in body.get("Resources", [])]}


def _list_params(args: Args) -> dict[str, str]:
    params = {"count": str(args.get("count", 50))}
    if args.get("filter"):
        params["filter"] = args["filter"]
    if args.get("start_index"):
        params["startIndex"] = str(args["start_index"])
    return params


def _members_patch(op: str, user_id: str) -> dict[str, Any]:
    operation: dict[str, Any]
    if op == "add":
        operation = {"op": "add", "path": "members", "value": [{"value": user_id}]}
    else:
        operation = {"op": "remove", "path": f'members[value eq "{user_id}"]'}
    return {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [operation]}


def _done(action: str) -> Callable[[Any], Any]:
    return lambda body: {"status": "done", "action": action,
                         **({"user": _user(body)} if isinstance(body, dict) and "userName" in body
                            else {})}


# -- read-backs: how each write is confirmed when its answer was lost ------------------------

def _eq(attribute: str, value: str) -> str:
    """A SCIM equality filter (RFC 7644 §3.4.2.2); the value is a JSON string literal."""
    return f"{attribute} eq {json.dumps(value)}"


def _user_named(args: Args, body: Any) -> tuple[bool | None, str]:
    if not isinstance(body, dict) or not isinstance(body.get("totalResults"), int):
        return None, "the read answered no user list"
    if body["totalResults"] >= 1:
        return True, f"{args['user_name']} exists"
    return False, f"there is no user {args['user_name']}"


def _member(want: bool) -> Callable[[Args, Any], tuple[bool | None, str]]:
    def judge(args: Args, body: Any) -> tuple[bool | None, str]:
        groups = body.get("Resources") if isinstance(body, dict) else None
        if not isinstance(groups, list) or len(groups) != 1 or not isinstance(groups[0], dict):
            return None, "the read did not find the group"
        group = groups[0]
        present = any(isinstance(m, dict) and m.get("value") == args["user_id"]
                      for m in group.get("members") or [])
        where = f"user {args['user_id']} is {'' if present else 'not '}a member of group " \
                f"{group.get('displayName') or group.get('id')}"
        return present == want, where
    return judge


def _deactivated(args: Args, body: Any) -> tuple[bool | None, str]:
    if not isinstance(body, dict) or not isinstance(body.get("active"), bool):
        return None, f"user {args['user_id']} could not be read"
    if body["active"]:
        return False, f"user {args['user_id']} is still active"
    return True, f"user {args['user_id']} is deactivated"


def _deleted(args: Args, body: Any) -> tuple[bool | None, str]:
    if body is None:
        return True, f"user {args['user_id']} no longer exists"
    return False, f"user {args['user_id']} still exists"


def _group_of(group: Callable[[Args, CatalogContext], str]) -> Callable[
        [Args, CatalogContext], dict[str, Any]]:
    return lambda a, c: {"filter": _eq("id", group(a, c)), "count": 1}


_MEMBER_OF_GROUP = _group_of(lambda a, c: str(a["group_id"]))


CATALOG: tuple[Tool, ...] = (
    # -- tier 1: reads ------------------------------------------------------------------------
    Tool("list_users",
         "List or search the tenant's users (SCIM). Optional SCIM filter.",
         _schema({"filter": FILTER, "count": COUNT,
                  "start_index": {"type": "integer", "minimum": 1}}),
         summary=lambda a: "Read SCIM users, limit=" + str(a.get("count", 50))
         + (f", filter={a['filter']}" if a.get("filter") else ""),
         request=lambda a, c: AdminRequest("GET", "/Users", _list_params(a)),
         compact=_users),
    Tool("get_user", "Read one user by id.",
         _schema({"user_id": ID}, ("user_id",)),
         summary=lambda a: f"Read SCIM user {a['user_id']}",
         request=lambda a, c: AdminRequest("GET", f"/Users/{_p(a['user_id'])}"),
         rar_fields=lambda a: {"target": a["user_id"]},
         compact=lambda body: _user(body) if isinstance(body, dict) else body),
    Tool("list_groups", "List the tenant's groups.",
         _schema({"filter": FILTER, "count": COUNT}),
         summary=lambda a: "Read SCIM groups, limit=" + str(a.get("count", 50)),
         request=lambda a, c: AdminRequest("GET", "/Groups", _list_params(a)),
         compact=_groups),
    Tool("list_applications",
         "List the applications connected to the tenant.", _schema({}),
         summary=lambda a: "Read applications",
         request=lambda a, c: AdminRequest("GET", "/applications")),
    Tool("get_application",
         "Read one application's configuration.",
         _schema({"application_id": ID}, ("application_id",)),
         summary=lambda a: f"Read application {a['application_id']}",
         request=lambda a, c: AdminRequest("GET", f"/applications/{_p(a['application_id'])}"),
         rar_fields=lambda a: {"target": a["application_id"]}),
    Tool("list_access_policies",
         "List the tenant's access policies.", _schema({}),
         summary=lambda a: "Read access policies",
         request=lambda a, c: AdminRequest("GET", "/accesspolicies")),
    Tool("get_access_policy",
         "Read one access policy and its rules.",
         _schema({"policy_id": ID}, ("policy_id",)),
         summary=lambda a: f"Read access policy {a['policy_id']}",
         request=lambda a, c: AdminRequest("GET", f"/accesspolicies/{_p(a['policy_id'])}"),
         rar_fields=lambda a: {"target": a["policy_id"]}),
    # -- tier 2: writes (the user approves once per session) ------------------------------
    Tool("create_user", "Create a user.",
         _schema({"user_name": EMAIL, "given_name": NAME, "family_name": NAME,
                  "title": {"type": "string", "maxLength": 128}},
                 ("user_name", "given_name", "family_name")),
         # the person by name and e-mail, as the phone and the panel name everyone else
         summary=lambda a: f"Create user {a['given_name']} {a['family_name']} <{a['user_name']}>",
         request=lambda a, c: AdminRequest("POST", "/Users", json={
             "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
             "userName": a["user_name"], "active": True,
             "name": {"givenName": a["given_name"], "familyName": a["family_name"]},
             "displayName": f"{a['given_name']} {a['family_name']}",
             "emails": [{"value": a["user_name"], "type": "work", "primary": True}],
             **({"title": a["title"]} if a.get("title") else {})}),
         rar_fields=lambda a: {"target": a["user_name"]},
         compact=_done("created"),
         read_back=ReadBack("list_users",
                            lambda a, c: {"filter": _eq("userName", a["user_name"]),
                                          "count": 1}, _user_named)),
    Tool("add_user_to_group",
         "Add a user to a group.", _schema({"user_id": ID, "group_id": ID},
                                           ("user_id", "group_id")),
         summary=lambda a: f"Add user {a['user_id']} to group {a['group_id']}",
         request=lambda a, c: AdminRequest("PATCH", f"/Groups/{_p(a['group_id'])}",
                                           json=_members_patch("add", a["user_id"])),
         rar_fields=lambda a: {"target": a["user_id"], "group": a["group_id"]},
         compact=_done("added to group"),
         read_back=ReadBack("list_groups", _MEMBER_OF_GROUP, _member(True))),
    Tool("remove_user_from_group",
         "Remove a user from a group.", _schema({"user_id": ID, "group_id": ID},
                                                ("user_id", "group_id")),
         summary=lambda a: f"Remove user {a['user_id']} from group {a['group_id']}",
         request=lambda a, c: AdminRequest("PATCH", f"/Groups/{_p(a['group_id'])}",
                                           json=_members_patch("remove", a["user_id"])),
         rar_fields=lambda a: {"target": a["user_id"], "group": a["group_id"]},
         compact=_done("removed from group"),
         read_back=ReadBack("list_groups", _MEMBER_OF_GROUP, _member(False))),
    # -- tier 3: sensitive (the user approves every call) ---------------------------------
    Tool("deactivate_user",
         "Deactivate a user: they can no longer sign in and their sessions end.",
         _schema({"user_id": ID}, ("user_id",)),
         summary=lambda a: f"Deactivate user {a['user_id']}",
         request=lambda a, c: AdminRequest("PATCH", f"/Users/{_p(a['user_id'])}", json={
             "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
             "Operations": [{"op": "replace", "path": "active", "value": False}]}),
         rar_fields=lambda a: {"target": a["user_id"]},
         compact=_done("deactivated"),
         read_back=ReadBack("get_user", lambda a, c: {"user_id": a["user_id"]}, _deactivated)),
    Tool("revoke_user_sessions",
         "End every session of a user.", _schema({"user_id": ID}, ("user_id",)),
         summary=lambda a: f"Revoke all sessions of user {a['user_id']}",
         request=lambda a, c: AdminRequest("DELETE", f"/Users/{_p(a['user_id'])}/sessions"),
         rar_fields=lambda a: {"target": a["user_id"]},
         compact=_done("sessions revoked")),  # no read-back: the admin API reads no sessions
    # -- tier 4: blocked (the identity provider refuses to mint a token) ------------------
    Tool("delete_user", "Delete a user.",
         _schema({"user_id": ID}, ("user_id",)),
         summary=lambda a: f"Delete user {a['user_id']}",
         request=lambda a, c: AdminRequest("DELETE", f"/Users/{_p(a['user_id'])}"),
         rar_fields=lambda a: {"target": a["user_id"]},
         compact=_done("deleted"),
         read_back=ReadBack("get_user", lambda a, c: {"user_id": a["user_id"]}, _deleted)),
    Tool("grant_admin_role",
         "Make a user a tenant administrator.", _schema({"user_id": ID}, ("user_id",)),
         summary=lambda a: f"Grant tenant admin to user {a['user_id']}",
         request=lambda a, c: AdminRequest("PATCH", f"/Groups/{_p(c.admin_group_id)}",
                                           json=_members_patch("add", a["user_id"])),
         rar_fields=lambda a: {"target": a["user_id"]},
         compact=_done("granted admin"),
         read_back=ReadBack("list_groups", _group_of(lambda a, c: c.admin_group_id),
                            _member(True))),
)

_BY_NAME = {t.name: t for t in CATALOG}


def tool(name: str) -> Tool:
    """The tool named `name` (KeyError if the catalog has none)."""
    return _BY_NAME[name]


# -- the catalog as documentation ---------------------------------------------------------------

MARKDOWN_START = "<!-- catalog:start -->"
MARKDOWN_END = "<!-- catalog:end -->"


def _template(tool: Tool) -> tuple[str, str]:
    """The tool's request line and summary with each required argument shown as `{name}`."""
    args = {name: "{" + name + "}" for name in tool.input_schema.get("required", ())}
    request = tool.request(args, CatalogContext(admin_group_id="{admin_group}"))
    return f"{request.method} {unquote(request.path)}", tool.summary(args)


def markdown_table(tools: tuple[Tool, ...] = CATALOG) -> str:
    """The catalog as a Markdown table: tool, tier, RAR type, admin-API request, summary.
    README.md carries exactly this between MARKDOWN_START and MARKDOWN_END."""
    rows = ["| tool | tier | RAR type | admin API request | summary |",
            "|---|---|---|---|---|"]
    for t in tools:
        line, summary = _template(t)
        rows.append(f"| `{t.name}` | {t.tier} | `{t.rar_type}` | `{line}` | {summary} |")
    return "\n".join(rows) + "\n"


def replace_markdown_table(text: str, table: str | None = None) -> str:
    """`text` with the region between the markers replaced by the table (ValueError when the
    markers are missing or out of order)."""
    start, end = text.find(MARKDOWN_START), text.find(MARKDOWN_END)
    if start < 0 or end < start:
        raise ValueError(f"expected {MARKDOWN_START} ... {MARKDOWN_END}")
    head = text[:start + len(MARKDOWN_START)]
    return f"{head}\n{markdown_table() if table is None else table}{text[end:]}"


def main(argv: list[str] | None = None) -> int:
    """`python -m iia.catalog --markdown` prints the table; `--readme README.md` rewrites the
    table in place between the markers."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m iia.catalog", description=main.__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--markdown", action="store_true", help="print the Markdown table")
    group.add_argument("--readme", type=Path, help="rewrite the table in this file")
    options = parser.parse_args(argv)
    if options.markdown:
        print(markdown_table(), end="")
    else:
        path: Path = options.readme
        path.write_text(replace_markdown_table(path.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Building the RFC 9396 `authorization_details` object for one tool call.

One object describes exactly one operation: its registered `type` and `actions`, the admin API
in `locations` (§2.2), the tier, a one-line `summary` a person can read on their phone, the
type's own fields (its *argument fields*: `target`, `group`, and for a write the body it will
send) and a `digest` of those argument fields, so an approval or a token for one call can never
serve another.

A write names every attribute its request body carries: `create_user`'s object has
`attributes`, the SCIM resource exactly as `POST /Users` sends it (RFC 7643 §3, `schemas`
included); a PATCH's object (`add_user_to_group`, `remove_user_from_group`,
`deactivate_user`, `grant_admin_role`) has `operations`, the PatchOp's `Operations` exactly
(RFC 7644 §3.5.2: the operation, its path, its value). The admin API refuses a body that
carries anything else.

The digest is defined here once (`argument_digest`, `details_digest`); the simulated IdP and the
tests import it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from iia.catalog import CatalogContext, Tool

__all__ = ["COMMON_FIELDS", "argument_digest", "argument_fields", "authorization_details",
           "body_fields", "canonical_json", "details_digest", "session_consent_details", "wire"]

# The fields every object carries; all others are its argument fields.
COMMON_FIELDS = frozenset({"type", "actions", "locations", "tier", "summary", "digest"})


def wire(details: Mapping[str, Any]) -> str:
    """The `authorization_details` form parameter for one object (a JSON array, RFC 9396 §2)."""
    return json.dumps([dict(details)])


def canonical_json(value: Any) -> bytes:
    """The one canonical form: UTF-8 JSON (RFC 8259), object keys sorted by code point at every
    level, no whitespace (separators `,` and `:`), non-ASCII characters as themselves (not
    `\\u` escapes), no NaN or Infinity. `true` and `1` stay distinct."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def argument_fields(details: Mapping[str, Any]) -> dict[str, Any]:
    """An object's argument fields: every field but the common ones (`type`, `actions`,
    `locations`, `tier`, `summary`, `digest`)."""
    return {k: v for k, v in details.items() if k not in COMMON_FIELDS}


def argument_digest(fields: Mapping[str, Any]) -> str:
    """The digest of argument fields: `"sha256:"` followed by the 64 lowercase hex digits of
    SHA-256 over `canonical_json` of the JSON object of those fields (keys sorted, no
    whitespace, UTF-8). For example `{"target": "u1"}` digests the 15 bytes
    `{"target":"u1"}`; an object with no argument fields digests `{}`."""
    return "sha256:" + hashlib.sha256(canonical_json(dict(fields))).hexdigest()


def details_digest(details: Mapping[str, Any]) -> str:
    """What an authorization_details object's `digest` must be: `argument_digest` of its own
    argument fields (`argument_fields`). The IdP recomputes it at token exchange and CIBA."""
    return argument_digest(argument_fields(details))


def body_fields(tool: Tool, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The fields that name the body the tool's request sends: `attributes` (the whole body of
    a POST), `operations` (a PATCH's `Operations`), none for a request without a body. A body
    never depends on the tenant context (only a path does)."""
    request = tool.request(arguments, CatalogContext())
    if request.json is None:
        return {}
    if request.method == "PATCH":
        return {"operations": request.json["Operations"]}
    return {"attributes": request.json}


def authorization_details(tool: Tool, arguments: Mapping[str, Any],
                          admin_api_url: str) -> dict[str, Any]:
    fields = {**tool.rar_fields(arguments), **body_fields(tool, arguments)}
    return {
        "type": tool.rar_type,
        "actions": list(tool.actions),
        "locations": [admin_api_url],
        "tier": tool.tier,
        "summary": tool.summary(arguments),
        "digest": argument_digest(fields),
        **fields,
    }


def session_consent_details(session_id: str, duration: int, admin_api_url: str,
                            summary: str) -> dict[str, Any]:
    """The tier-2 approval: the user lets the agent write in this session for `duration` s."""
    fields = {"session": session_id, "duration": duration}
    return {
        "type": "agent_write_consent",
        "actions": ["approve"],
        "locations": [admin_api_url],
        "tier": 2,
        "summary": summary,
        "digest": argument_digest(fields),
        **fields,
    }

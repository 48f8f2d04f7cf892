"""CAEP 1.0 event payloads (OpenID Continuous Access Evaluation Profile 1.0).

One builder per CAEP event type Antenna transmits. Each returns the event-specific claims the
spec requires plus the optional claims of §2 (`event_timestamp`, `initiating_entity`,
`reason_admin`, `reason_user`); `check` refuses a payload that lacks a required claim or uses a
value outside the spec's lists, so Antenna never signs a CAEP SET a receiver must reject.

    session-revoked         §3.1  no event-specific claims
    token-claims-change     §3.2  claims: {name: new value, ...} (REQUIRED, non-empty)
    credential-change       §3.3  credential_type, change_type: create|revoke|update|delete
    assurance-level-change  §3.4  namespace, current_level; previous_level, change_direction
                                  (increase|decrease; SHOULD be given with previous_level)

`credential_type` may be any value the transmitter and receiver agree on besides the spec's
list; the lab's one is `client-secret` (the MCP server's Verify client secret, held in Vault).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from iia.antenna.event_types import CAEP
from iia.errors import IIAError

__all__ = [
    "CHANGE_TYPES",
    "CREDENTIAL_TYPES",
    "INITIATING_ENTITIES",
    "CaepEventError",
    "assurance_level_change",
    "check",
    "credential_change",
    "session_revoked",
    "token_claims_change",
]

INITIATING_ENTITIES = ("admin", "user", "policy", "system")
CHANGE_TYPES = ("create", "revoke", "update", "delete")
CREDENTIAL_TYPES = ("password", "pin", "x509", "fido2-platform", "fido2-roaming", "fido-u2f",
                    "verifiable-credential", "phone-voice", "phone-sms", "app",
                    "client-secret")  # the last one is the lab's own (agreed with receivers)
DIRECTIONS = ("increase", "decrease")


class CaepEventError(IIAError):
    """A CAEP payload the spec does not allow (a required claim missing, a value off-list)."""

    code = "invalid_event"
    status = 400


def _common(initiating_entity: str | None, reason_admin: str | None, reason_user: str | None,
            at: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {"event_timestamp": int(time.time() if at is None else at)}
    if initiating_entity is not None:
        out["initiating_entity"] = initiating_entity
    if reason_admin:
        out["reason_admin"] = {"en": reason_admin}
    if reason_user:
        out["reason_user"] = {"en": reason_user}
    return out


def session_revoked(*, reason_admin: str | None = None, reason_user: str | None = None,
                    initiating_entity: str | None = "policy",
                    at: float | None = None) -> dict[str, Any]:
    return check(CAEP["session-revoked"],
                 _common(initiating_entity, reason_admin, reason_user, at))


def token_claims_change(claims: Mapping[str, Any], *, reason_admin: str | None = None,
                        reason_user: str | None = None, initiating_entity: str | None = None,
                        at: float | None = None) -> dict[str, Any]:
    return check(CAEP["token-claims-change"], {
        **_common(initiating_entity, reason_admin, reason_user, at), "claims": dict(claims)})


def credential_change(credential_type: str, change_type: str, *,
                      friendly_name: str | None = None, reason_admin: str | None = None,
                      reason_user: str | None = None, initiating_entity: str | None = None,
                      at: float | None = None) -> dict[str, Any]:
    payload = {**_common(initiating_entity, reason_admin, reason_user, at),
               "credential_type": credential_type, "change_type": change_type}
    if friendly_name:
        payload["friendly_name"] = friendly_name
    return check(CAEP["credential-change"], payload)


def assurance_level_change(namespace: str, current_level: str, *,
                           previous_level: str | None = None,
                           change_direction: str | None = None,
                           reason_admin: str | None = None, reason_user: str | None = None,
                           initiating_entity: str | None = None,
                           at: float | None = None) -> dict[str, Any]:
    payload = {**_common(initiating_entity, reason_admin, reason_user, at),
               "namespace": namespace, "current_level": current_level}
    if previous_level is not None:
        payload["previous_level"] = previous_level
    if change_direction is not None:
        payload["change_direction"] = change_direction
    return check(CAEP["assurance-level-change"], payload)


def _require_str(payload: Mapping[str, Any], name: str, allowed: tuple[str, ...] = ()) -> None:
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise CaepEventError(f"{name} is required (a non-empty string)")
    if allowed and value not in allowed:
        raise CaepEventError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")


def check(event_type: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """`payload` as a dict when it is a valid CAEP 1.0 event of `event_type`; else raise.
    Event types that are not CAEP's pass through unchecked."""
    out = dict(payload)
    if event_type not in CAEP.values():
        return out
    if "event_timestamp" in out and not isinstance(out["event_timestamp"], int):
        raise CaepEventError("event_timestamp must be a NumericDate (seconds, an integer)")
    if out.get("initiating_entity") is not None and \
            out["initiating_entity"] not in INITIATING_ENTITIES:
        raise CaepEventError(f"initiating_entity must be one of {', '.join(INITIATING_ENTITIES)}")
    for reason in ("reason_admin", "reason_user"):
        if reason in out and (not isinstance(out[reason], Mapping) or not out[reason]):
            raise CaepEventError(f"{reason} must map language tags to messages")
    if event_type == CAEP["token-claims-change"]:
        if not isinstance(out.get("claims"), Mapping) or not out["claims"]:
            raise CaepEventError("claims is required: one or more claims with their new values")
    elif event_type == CAEP["credential-change"]:
        _require_str(out, "credential_type", CREDENTIAL_TYPES)
        _require_str(out, "change_type", CHANGE_TYPES)
    elif event_type == CAEP["assurance-level-change"]:
        _require_str(out, "namespace")
        _require_str(out, "current_level")
        if "previous_level" in out:
            _require_str(out, "previous_level")
        if "change_direction" in out:
            _require_str(out, "change_direction", DIRECTIONS)
    return out

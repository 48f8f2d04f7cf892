"""Security event types Antenna transmits.

CAEP 1.0 (OpenID Continuous Access Evaluation Profile) defines the session and credential
events; the agent's own decisions get this project's event-type URIs. Every decision the chain
emits on the event bus maps to exactly one SET type (`FOR_BUS_EVENT`).
"""

from __future__ import annotations

__all__ = ["AGENT", "CAEP", "FOR_BUS_EVENT", "SUPPORTED", "VERIFICATION"]

_CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
CAEP = {
    "session-revoked": _CAEP + "session-revoked",
    "credential-change": _CAEP + "credential-change",
    "assurance-level-change": _CAEP + "assurance-level-change",
    "token-claims-change": _CAEP + "token-claims-change",
}

_AGENT = "https://iia.lab/secevent/agent/"
AGENT = {
    "token-exchange-issued": _AGENT + "token-exchange-issued",
    "token-exchange-denied": _AGENT + "token-exchange-denied",
    "approval-given": _AGENT + "approval-given",
    "approval-denied": _AGENT + "approval-denied",
    "approval-expired": _AGENT + "approval-expired",
    "approval-reused": _AGENT + "approval-reused",
    "approval-withdrawn": _AGENT + "approval-withdrawn",
}

VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"

SUPPORTED = sorted([*CAEP.values(), *AGENT.values(), VERIFICATION])

# bus event type -> SET event type: the decisions, and one identity event that is a CAEP
# credential change (a stale Vault-held client secret re-read); other passive identity events
# (SVID fetched, Vault login, secret read) are not SETs
FOR_BUS_EVENT = {
    "agent:token_exchange_success": AGENT["token-exchange-issued"],
    "agent:token_exchange_denied": AGENT["token-exchange-denied"],
    "agent:hitl_approved": AGENT["approval-given"],
    "agent:hitl_denied": AGENT["approval-denied"],
    "agent:hitl_expired": AGENT["approval-expired"],  # the push timed out, nobody answered
    "agent:hitl_cached": AGENT["approval-reused"],
    "agent:push_withdrawn": AGENT["approval-withdrawn"],  # the client cancelled the call
    "caep:session_revoked": CAEP["session-revoked"],
    "vault:rotation_retry": CAEP["credential-change"],
}

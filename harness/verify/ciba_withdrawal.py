"""Withdrawing a CIBA request: the client that asked no longer needs the answer (the MCP tool
call it was for was cancelled), so the push leaves the user's phone and nothing is ever
issued for it.

OpenID CIBA Core 1.0 defines no cancellation. The tenant offers one, shaped like the CIBA
endpoints themselves, and advertises it in its metadata as `backchannel_withdrawal_endpoint`:

    POST {issuer}/bc-authorize/withdraw        form: auth_req_id
         client authentication as at bc-authorize (§7.1: client_secret_basic / _post)
      -> 200 {"status": "withdrawn"}            the pending push is off the phone for good
      -> 200 {"status": "approved" | "denied" | "expired" | "withdrawn"}
                                                it was answered (or closed) already; an
                                                approval it left unused is spent
      -> 400 invalid_request                    no auth_req_id
      -> 400 invalid_grant                      unknown, or another client's auth_req_id
      -> 401 invalid_client                     the client did not authenticate

Why this shape: `auth_req_id` is the handle only the requesting client holds (§7.3) and the
one it already presents at the token endpoint, so presenting it with the same client
authentication proves the right to withdraw; a stranger's or another client's handle is
`invalid_grant`, exactly as a token request with it would be, and says nothing about whose it
is. RFC 7009 revocation was the alternative, but it answers 200 for anything, and the client
needs to learn whether the user had already answered; the answer is idempotent, so a retry
after a lost response is harmless. Afterwards the token request for it is `invalid_grant` and
an answer on the phone is refused (409).
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse

from harness.verify.approvals import Approvals
from harness.verify.audit import AuditTrail, Decision
from harness.verify.client_auth import Client
from harness.verify.errors import NO_STORE, InvalidGrant, InvalidRequest

__all__ = ["WITHDRAW_PATH", "CibaWithdrawal"]

WITHDRAW_PATH = "/bc-authorize/withdraw"  # under the issuer


class CibaWithdrawal:
    def __init__(self, *, approvals: Approvals, audit: AuditTrail) -> None:
        self.approvals = approvals
        self.audit = audit

    def withdraw(self, client: Client, form: Mapping[str, str]) -> JSONResponse:
        auth_req_id = form.get("auth_req_id")
        if not auth_req_id:
            raise InvalidRequest("auth_req_id is required: it names the request to withdraw")
        push = self.approvals.by_auth_req_id(auth_req_id)
        if push is None or push.client_id != client.client_id:
            raise InvalidGrant("auth_req_id is unknown or belongs to another client")
        before = push.status
        status, spent = self.approvals.withdraw(push)
        details = push.authorization_details[0]
        now_withdrawn = status == "withdrawn" and before == "pending"
        if now_withdrawn:
            reason = ("the requesting client withdrew the push (its call was cancelled): it "
                      "left the user's phone unanswered")
        else:
            reason = (f"the requesting client asked to withdraw a push that was already "
                      f"{status}" + ("; the unused approval it left was spent" if spent
                                     else ""))
        self.audit.record(Decision(kind="ciba", outcome="withdrawn" if now_withdrawn
                                   else "withdraw_late", reason=reason, user=push.email,
                                   sid=push.session, client_id=client.client_id,
                                   rar_type=details["type"], tier=push.tier,
                                   approval_id=push.id,
                                   target=str(details.get("target", "")) or None,
                                   details={"status": status, "approvalSpent": spent}))
        return JSONResponse({"status": status}, headers=NO_STORE)

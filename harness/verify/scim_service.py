"""The SCIM service (scim2-server's `ScimService`) as the lab's admin API configures it:
what it announces (RFC 7643 §5), its Bearer challenge (RFC 6750 §3), a last check that every
operation arrives with the grant the gate accepted (RFC 7644 §2), and group membership without
duplicate members (RFC 7644 §3.5.2.1)."""

from __future__ import annotations

from typing import Any

from scim2_models import (
    AuthenticationScheme,
    Bulk,
    ChangePassword,
    External,
    ForbiddenException,
    PatchOp,
    Reference,
    Resource,
    ResourceType,
    SCIMException,
    ServiceProviderConfig,
)
from scim2_server.conditions import Conditions
from scim2_server.requests import ScimRequest
from scim2_server.responses import ScimResponse
from scim2_server.routing import Target
from scim2_server.service import ScimService

from harness.verify.admin_errors import NotCovered, challenge
from harness.verify.coverage import Grant
from harness.verify.directory import Directory

__all__ = ["AdminScimService", "service_provider_config"]


def service_provider_config(directory: Directory) -> ServiceProviderConfig:
    """RFC 7643 §5: what this API supports. Bulk and password change are off (no token type
    covers them); the one authentication scheme is an OAuth bearer token (RFC 6750)."""
    base = directory.provider.config or ServiceProviderConfig()
    scheme = AuthenticationScheme(
        type=AuthenticationScheme.Type.oauthbearertoken, name="OAuth Bearer Token",
        description="An on-behalf-of token from token exchange (RFC 8693) whose one "
                    "authorization_details object (RFC 9396) covers exactly one request",
        spec_uri=Reference[External]("https://www.rfc-editor.org/rfc/rfc6750"), primary=True)
    return base.model_copy(update={
        "bulk": Bulk(supported=False, max_operations=0, max_payload_size=0),
        "change_password": ChangePassword(supported=False),
        "authentication_schemes": [scheme]})


def _unique_members(members: list[Any]) -> list[Any]:
    """Group members without a second entry for the same `value` (the first one stays)."""
    seen: set[str] = set()
    unique = []
    for member in members:
        if member.value is not None and member.value in seen:
            continue
        if member.value is not None:
            seen.add(member.value)
        unique.append(member)
    return unique


class AdminScimService(ScimService):
    def __init__(self, directory: Directory) -> None:
        super().__init__(directory.provider)
        self.config = service_provider_config(directory)

    def authorize(self, request: ScimRequest, target: Target,
                  resource_type: ResourceType) -> None:
        """RFC 7644 §2, defence in depth: nothing reaches the storage without the grant the
        admin API accepted for this very method and resource (`request.subject.grant`)."""
        if getattr(request.subject, "static", False):
            return  # a static API-client token (configured for the benchmark baseline only)
        grant = getattr(request.subject, "grant", None)
        segments = grant.path.strip("/").split("/") if isinstance(grant, Grant) else [""]
        if target.endpoint is None:  # a search at the root (RFC 7644 §3.4.3): `POST /.search`
            covered = segments == [".search"]
        else:
            covered = segments[0] == target.endpoint and (
                target.resource_id is None or segments[1:2] == [target.resource_id])
        if not isinstance(grant, Grant) or grant.rar.method != request.method.upper() or \
                not covered:
            raise ForbiddenException(detail="no accepted authorization_details covers this "
                                            "operation")

    def apply_patch(self, current: Resource[Any], patch_op: PatchOp[Any],
                    conditions: Conditions) -> Resource[Any] | None:
        """RFC 7644 §3.5.2.1: adding a value a multi-valued attribute already holds makes no
        change. scim2-models appends a group member again when the new entry differs from the
        stored one only in its sub-attributes (`display`); a member is its `value`
        (RFC 7643 §4.2), so the duplicate is dropped, and a PATCH that ends up changing nothing
        answers as such (same ETag, same lastModified)."""
        original = current.model_dump(exclude={"meta"})
        patched = super().apply_patch(current, patch_op, conditions)
        if patched is None:
            return None
        # a Group is the provider's schema-built model, not a scim2_models.Group subclass
        group: Any = patched
        if getattr(group, "members", None):
            group.members = _unique_members(group.members)
        return None if patched.model_dump(exclude={"meta"}) == original else patched

    def www_authenticate(self, exception: SCIMException) -> str | None:
        return challenge(exception)

    def error_response(self, exception: Exception) -> ScimResponse:
        """A 401 carries the challenge (scim2-server); so does a 403 `insufficient_scope`
        (RFC 6750 §3.1)."""
        response = super().error_response(exception)
        if isinstance(exception, NotCovered):
            response.headers["WWW-Authenticate"] = challenge(exception)
        return response

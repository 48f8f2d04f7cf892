"""The admin API's endpoints that are not SCIM, shaped like a Verify tenant's JSON API:

* `GET /applications` → `{"totalCount": n, "applications": [{id, name, type, owner}]}`
* `GET /applications/{id}` → the application with its `config`
* `GET /accesspolicies` → `{"totalCount": n, "accessPolicies": [...]}`
* `GET /accesspolicies/{id}` → one access policy
* `DELETE /Users/{id}/sessions` → 204: every IdP session of the user ends

They run only once the admin API admitted the request; errors are SCIM error bodies
(RFC 7644 §3.12) like everywhere else in the API.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from scim2_models import NotFoundException
from scim2_server.errors import MethodNotAllowedException
from scim2_server.responses import ScimResponse

from harness.verify.directory import Directory
from harness.verify.sessions import SessionStore

__all__ = ["VerifyEndpoints"]

Handler = Callable[[list[str]], ScimResponse]


def _json(body: dict[str, Any]) -> ScimResponse:
    return ScimResponse(HTTPStatus.OK, body, {"Content-Type": "application/json"})


class VerifyEndpoints:
    def __init__(self, directory: Directory, sessions: SessionStore) -> None:
        self.directory = directory
        self.sessions = sessions
        self.routes: list[tuple[str, tuple[str | None, ...], Handler]] = [
            ("GET", ("applications",), self.list_applications),
            ("GET", ("applications", None), self.get_application),
            ("GET", ("accesspolicies",), self.list_access_policies),
            ("GET", ("accesspolicies", None), self.get_access_policy),
            ("DELETE", ("Users", None, "sessions"), self.revoke_sessions),
        ]

    def match(self, method: str, segments: list[str]) -> Handler | None:
        """The handler of a request on one of these paths (None: not one of ours); 405 when
        the path is ours but the method is not (RFC 9110 §15.5.6)."""
        allowed = []
        for route_method, pattern, handler in self.routes:
            if len(pattern) == len(segments) and all(
                    p is None or p == s for p, s in zip(pattern, segments, strict=True)):
                if route_method == method:
                    return handler
                allowed.append(route_method)
        if allowed:
            raise MethodNotAllowedException(allowed=allowed)
        return None

    def list_applications(self, segments: list[str]) -> ScimResponse:
        apps = [{k: a[k] for k in ("id", "name", "type", "owner") if k in a}
                for a in self.directory.applications]
        return _json({"totalCount": len(apps), "applications": apps})

    def get_application(self, segments: list[str]) -> ScimResponse:
        app = self.directory.application(segments[1])
        if app is None:
            raise NotFoundException(detail=f"application {segments[1]!r} not found")
        return _json(app)

    def list_access_policies(self, segments: list[str]) -> ScimResponse:
        policies = self.directory.access_policies
        return _json({"totalCount": len(policies), "accessPolicies": policies})

    def get_access_policy(self, segments: list[str]) -> ScimResponse:
        policy = self.directory.access_policy(segments[1])
        if policy is None:
            raise NotFoundException(detail=f"access policy {segments[1]!r} not found")
        return _json(policy)

    def revoke_sessions(self, segments: list[str]) -> ScimResponse:
        user_id = segments[1]
        if self.directory.user(user_id) is None:
            raise NotFoundException(detail=f"User {user_id!r} not found")
        self.sessions.end_all_for_user(user_id, "sessions revoked through the admin API")
        return ScimResponse(HTTPStatus.NO_CONTENT)

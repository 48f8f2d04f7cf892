"""The client of the IdP's admin API (SCIM 2.0 and Verify-style JSON), called only with an
on-behalf-of token minted for exactly this request. SCIM error bodies (RFC 7644 §3.12) become
`AdminApiError` with the status and the server's `detail`.

A failure that leaves open whether the request was executed (it was sent, and the answer was a
5xx or never came: a read timeout, a dropped connection) is an `AdminApiUnavailableError` with
`maybe_executed`; one where the request cannot have reached the API (no connection) is not."""

from __future__ import annotations

from typing import Any

import httpx

from iia.catalog import AdminRequest
from iia.errors import DependencyError, IIAError

__all__ = ["AdminApiClient", "AdminApiError", "AdminApiUnavailableError"]


class AdminApiError(IIAError):
    """The admin API refused or failed the request (4xx); `http_status` is its status."""

    code = "admin_api_error"

    def __init__(self, description: str, *, http_status: int, scim_type: str | None = None):
        super().__init__(description, dependency="admin_api", upstream_code=str(http_status))
        self.http_status = http_status
        self.scim_type = scim_type


class AdminApiUnavailableError(DependencyError):
    code = "admin_api_unavailable"

    def __init__(self, description: str, *, upstream_code: str | None = None,
                 maybe_executed: bool = False) -> None:
        super().__init__(description, dependency="admin_api", upstream_code=upstream_code)
        self.maybe_executed = maybe_executed  # the request may have reached the admin API


class AdminApiClient:
    def __init__(self, base_url: str, *, http: httpx.Client | None = None,
                 timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = http or httpx.Client(timeout=timeout)

    def send(self, request: AdminRequest, token: str) -> Any:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/scim+json"}
        if request.json is not None:
            headers["Content-Type"] = "application/scim+json"
        try:
            response = self._http.request(request.method, self.base_url + request.path,
                                          params=dict(request.params), json=request.json,
                                          headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise AdminApiUnavailableError(f"the admin API at {self.base_url} is unreachable "
                                           f"({exc.__class__.__name__})") from exc
        except httpx.HTTPError as exc:  # sent, perhaps executed, and no answer came back
            raise AdminApiUnavailableError(f"the admin API at {self.base_url} gave no answer "
                                           f"({exc.__class__.__name__})",
                                           maybe_executed=True) from exc
        if response.status_code >= 500:
            raise AdminApiUnavailableError(f"the admin API answered HTTP {response.status_code}",
                                           upstream_code=str(response.status_code),
                                           maybe_executed=True)
        body: Any = None
        if response.content:
            try:
                body = response.json()
            except ValueError:
                body = response.text
        if response.status_code >= 400:
            detail = body.get("detail") if isinstance(body, dict) else None
            raise AdminApiError(str(detail or f"HTTP {response.status_code}"),
                                http_status=response.status_code,
                                scim_type=body.get("scimType") if isinstance(body, dict) else None)
        return body

    def close(self) -> None:
        self._http.close()

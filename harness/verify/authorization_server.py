"""The simulated Verify's OAuth 2.0 authorization server: authlib's server framework on Starlette.

authlib ships no Starlette server integration; this module is that adapter. Starlette handlers
are async and authlib is synchronous, so each endpoint reads the request body first
(`FormRequest.read`), then runs authlib in a worker thread (the grants do blocking work: Vault
writes when the client secret rotates, fetching the SPIFFE bundle, Cedar evaluation).

    VerifyAuthorizationServer (authlib rfc6749.AuthorizationServer)
      query_client        -> harness.verify.client_auth.Client (authlib's ClientMixin)
      authenticate_client -> authlib's client_secret_basic / client_secret_post / none, one
                             method per request (RFC 6749 §2.3), refusals worded by
                             client_auth.refusal as invalid_client 401 + WWW-Authenticate
      token endpoint      -> the grants in harness/verify/grants.py (code + PKCE S256, refresh
                             with rotation, RFC 8693 token exchange, CIBA)
      save_token          -> TokenService.keep_refresh_token (access tokens are JWTs, not kept)
      introspection, revocation -> authlib's RFC 7662 / RFC 7009 endpoints (harness/verify/oidc.py)
      authorization endpoint    -> authlib's code grant validates the request (client, redirect
                             URI, response_type, PKCE); the login itself is OidcProvider's

Errors: authlib's `OAuth2Error`s are rendered by authlib; the IdP's own
(harness.verify.errors.OAuthError, raised by the grants that delegate to TokenExchange and Ciba)
by their `response()`. Every response carries `Cache-Control: no-store` (RFC 6749 §5.1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from authlib.oauth2.rfc6749 import AuthorizationServer, JsonRequest, OAuth2Request
from authlib.oauth2.rfc6749.errors import (
    InvalidClientError,
    InvalidScopeError,
    OAuth2Error,
    UnsupportedGrantTypeError,
)
from authlib.oauth2.rfc6749.requests import JsonPayload, OAuth2Payload
from authlib.oauth2.rfc6749.util import scope_to_list
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from harness.verify.client_auth import Client, ClientRegistry, refusal
from harness.verify.errors import NO_STORE, InvalidClient, InvalidRequest, OAuthError
from harness.verify.tokens import Grantee, TokenService

__all__ = ["FormRequest", "VerifyAuthorizationServer"]

T = TypeVar("T")


@dataclass(frozen=True)
class FormRequest:
    """An HTTP request whose body Starlette has already read: what authlib needs of it."""

    method: str
    url: str
    headers: Headers
    items: tuple[tuple[str, str], ...]  # the form (and, at /authorize, the query) in order

    @classmethod
    async def read(cls, request: Request, *, with_query: bool = False) -> FormRequest:
        items: list[tuple[str, str]] = list(request.query_params.multi_items()) \
            if with_query else []
        if request.method == "POST":
            items += [(k, v) for k, v in (await request.form()).multi_items()
                      if isinstance(v, str)]
        return cls(method=request.method, url=str(request.url), headers=request.headers,
                   items=tuple(items))

    @property
    def form(self) -> dict[str, str]:
        """One value per name: the first (repeats are authlib's to refuse where they matter)."""
        out: dict[str, str] = {}
        for k, v in self.items:
            out.setdefault(k, v)
        return out


class _Payload(OAuth2Payload):  # type: ignore[misc]
    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self._data: dict[str, str] = {}
        self._datalist: dict[str, list[str]] = {}
        for k, v in items:
            self._data.setdefault(k, v)
            self._datalist.setdefault(k, []).append(v)

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> dict[str, list[str]]:
        return self._datalist


class StarletteOAuth2Request(OAuth2Request):  # type: ignore[misc]
    def __init__(self, request: FormRequest) -> None:
        super().__init__(request.method, request.url, headers=request.headers)
        self.payload = _Payload(request.items)
        self.source = request

    @property
    def form(self) -> dict[str, str]:
        return dict(self.payload.data)

    @property
    def args(self) -> dict[str, str]:
        return dict(self.payload.data)


class _JsonPayload(JsonPayload):  # type: ignore[misc]
    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    @property
    def data(self) -> dict[str, Any]:
        return self._data


class LocatedRedirect(Response):
    """A redirect whose `location` authlib's hooks can read and rewrite (RFC 9207 `iss`)."""

    def __init__(self, location: str, status_code: int = 302,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status_code=status_code, headers={**(headers or {}),
                                                           "Location": location})

    @property
    def location(self) -> str:
        return self.headers["location"]

    @location.setter
    def location(self, value: str) -> None:
        self.headers["location"] = value


class VerifyAuthorizationServer(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, *, clients: ClientRegistry, tokens: TokenService,
                 scopes_supported: Iterable[str] = ()) -> None:
        super().__init__(scopes_supported=list(scopes_supported) or None)
        self.clients = clients
        self.tokens = tokens
        self.register_token_generator("default", tokens.generator)

    # -- what authlib asks of a framework integration ----------------------------------------

    def query_client(self, client_id: str) -> Client | None:
        return self.clients.get(client_id)

    def save_token(self, token: Mapping[str, Any], request: OAuth2Request) -> None:
        """Access tokens are self-contained JWTs; a refresh token is kept with its grant."""
        if token.get("refresh_token") and isinstance(request.user, Grantee):
            self.tokens.keep_refresh_token(
                token["refresh_token"], request.user.session,
                client_id=request.client.client_id, scope=token.get("scope", ""),
                resource=request.user.resource)

    def validate_requested_scope(self, scope: str | None) -> None:
        """RFC 6749 §3.3: a scope this tenant does not know is `invalid_scope` (authlib's
        check, with a sentence naming it); what the client is registered for is
        Client.get_allowed_scope's."""
        unknown = sorted(set(scope_to_list(scope) or []) - set(self.scopes_supported or []))
        if scope and self.scopes_supported and unknown:
            raise InvalidScopeError(f"this tenant knows no scope {' '.join(unknown)} (it "
                                    f"knows {' '.join(self.scopes_supported)})")

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """No signal system: the grants record their decisions in the audit trail."""

    def create_oauth2_request(self, request: FormRequest | OAuth2Request) -> OAuth2Request:
        if isinstance(request, OAuth2Request):
            return request
        return StarletteOAuth2Request(request)

    def create_json_request(self, request: FormRequest) -> JsonRequest:
        json_request = JsonRequest(request.method, request.url, headers=request.headers)
        json_request.payload = _JsonPayload(request.form)
        return json_request

    def handle_response(self, status: int, body: Any,
                        headers: Iterable[tuple[str, str]]) -> Response:
        merged = {k: v for k, v in headers}
        merged.update(NO_STORE)
        if "Location" in merged:
            return LocatedRedirect(merged.pop("Location"), status, merged)
        if isinstance(body, dict):
            merged.pop("Content-Type", None)
            return JSONResponse(body, status_code=status, headers=merged)
        return Response(body or b"", status_code=status, headers=merged)

    def get_token_grant(self, request: OAuth2Request) -> Any:
        """authlib's lookup by grant_type, which must be there (RFC 6749 §5.2 invalid_request)
        and is named in the refusal of one this server does not serve."""
        grant_type = request.payload.grant_type
        if not grant_type:
            raise InvalidRequest("grant_type is required")
        try:
            return super().get_token_grant(request)
        except UnsupportedGrantTypeError as exc:
            exc.description = f"grant type {grant_type!r} is not supported"
            raise

    # -- client authentication (RFC 6749 §2.3) ------------------------------------------------

    def authenticate_client(self, request: OAuth2Request, methods: list[str],
                            endpoint: str = "token") -> Client:
        """authlib's methods, in authlib's order; a request that uses two methods at once is
        refused (RFC 6749 §2.3: "MUST NOT use more than one"), and a refusal says why."""
        basic = request.headers.get("authorization", "").lower().startswith("basic ")
        if basic and "client_secret" in request.payload.data:
            raise InvalidRequest("use one client authentication method, not two")
        try:
            client: Client = super().authenticate_client(request, methods, endpoint)
        except InvalidClientError as exc:
            raise InvalidClient(refusal(request.headers, request.payload.data, self.clients,
                                        endpoint)) from exc
        request.client = client
        return client

    # -- the async entry points -----------------------------------------------------------

    @staticmethod
    def respond(call: Callable[[], Response]) -> Response:
        """Run one authlib call; the IdP's own OAuth errors render as themselves."""
        try:
            return call()
        except OAuthError as exc:
            return exc.response()

    async def token(self, request: Request) -> Response:
        form = await FormRequest.read(request)
        return await run_in_threadpool(self.respond, lambda: self.create_token_response(form))

    async def endpoint(self, name: str, request: Request) -> Response:
        form = await FormRequest.read(request)
        return await run_in_threadpool(
            self.respond, lambda: self.create_endpoint_response(name, form))

    async def with_client(self, request: Request, methods: list[str], endpoint: str,
                          handler: Callable[[Client, Mapping[str, str]], Response]) -> Response:
        """An endpoint that is no token grant (CIBA's backchannel authentication): the client
        authenticates as at the token endpoint, then `handler` answers."""
        form = await FormRequest.read(request)

        def call() -> Response:
            oauth_request = self.create_oauth2_request(form)
            try:
                client = self.authenticate_client(oauth_request, methods, endpoint)
            except OAuth2Error as exc:
                return self.handle_error_response(oauth_request, exc)
            return handler(client, form.form)

        return await run_in_threadpool(self.respond, call)

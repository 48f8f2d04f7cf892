"""The tenant's OpenID Provider for people: login, the code store, the grants' user side,
introspection, revocation and logout. The protocol machinery is authlib's (the authorization
server in harness/verify/authorization_server.py, the grants in harness/verify/grants.py); this
module owns what is this tenant's own.

* Authorization code flow (RFC 6749 §4.1, OpenID Connect Core §3.1) for the public client
  `iia-ui`: authlib validates the request (client, redirect URI, response_type, PKCE S256 —
  RFC 7636 §4.2, `plain` refused); redirect URIs on the loopback interface match on any port
  (RFC 8252 §7.3); the response names the issuer (RFC 9207).
* The lab has no passwords: the login ends in a passkey assertion (WebAuthn, RP ID localhost:
  harness/verify/passkeys.py). The page is served at http://localhost:PORT; `login_hint` only
  says whose passkey to ask for. Scripts sign with the lab's software authenticator
  (harness/verify/login.py). Each login starts a session (`sid`).
* A code is spent when it is presented; presenting it again ends its session (RFC 6749 §4.1.2).
* Access tokens follow RFC 9068 for the resource named in `resource` (RFC 8707), the MCP server.
* Refresh tokens rotate on every use; reusing a spent one ends the session (RFC 9700 §4.14).
* Introspection (RFC 7662) for confidential clients and revocation (RFC 7009): authlib's
  endpoints over this tenant's tokens; RP-initiated logout.
"""

from __future__ import annotations

import html
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlencode, urlsplit, urlunsplit

from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749.errors import OAuth2Error, UnauthorizedClientError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc9207 import IssuerParameter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from harness.verify.audit import AuditTrail, Decision
from harness.verify.authorization_server import FormRequest, VerifyAuthorizationServer
from harness.verify.client_auth import (
    CONFIDENTIAL_AUTH_METHODS,
    Client,
    ClientRegistry,
    loopback_redirect_matches,
)
from harness.verify.directory import Directory
from harness.verify.errors import InvalidGrant, InvalidTarget
from harness.verify.passkeys import PasskeyError, RelyingParty, user_facing_url
from harness.verify.sessions import SessionStore
from harness.verify.tokens import Grantee, RefreshGrant, TokenInvalid, TokenService
from harness.verify.verify_app import login_page
from iia.protocol import ACCESS_TOKEN_TYP

__all__ = ["AuthorizationCode", "Introspection", "OidcProvider", "Revocation",
           "TenantIssuer", "loopback_redirect_matches"]

CODE_TTL = 60.0


@dataclass
class AuthorizationCode:
    client_id: str
    redirect_uri: str
    code_challenge: str
    code_challenge_method: str
    user_id: str
    sid: str
    scope: str
    resource: str
    nonce: str | None
    expires_at: float
    used: bool = False

    # -- authlib's AuthorizationCodeMixin -------------------------------------------------------

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


def _with_params(uri: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(uri)
    query = "&".join(filter(None, [parts.query, urlencode(params)]))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def _ascii(text: str) -> str:
    """RFC 6749 §4.1.2.1: an error_description is restricted ASCII (a login_hint may not be)."""
    return "".join(c if 0x20 <= ord(c) <= 0x7E and c not in '"\\' else "?" for c in text)


class TenantIssuer(IssuerParameter):  # type: ignore[misc]
    """RFC 9207: authlib adds `iss` to the authorization response."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer

    def get_issuer(self) -> str:
        return self.issuer


class OidcProvider:
    def __init__(self, *, issuer: str, mcp_resource: str, clients: ClientRegistry,
                 directory: Directory, sessions: SessionStore, tokens: TokenService,
                 audit: AuditTrail, server: VerifyAuthorizationServer,
                 passkeys: RelyingParty | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.issuer = issuer
        self.passkeys = passkeys or RelyingParty(origin=user_facing_url(issuer), clock=clock)
        self.public_url = user_facing_url(issuer)
        self.mcp_resource = mcp_resource
        self.clients = clients
        self.directory = directory
        self.sessions = sessions
        self.tokens = tokens
        self.audit = audit
        self.server = server
        self._clock = clock
        self._lock = threading.Lock()
        self._codes: dict[str, AuthorizationCode] = {}
        # the tenant's setting for clients it did not configure (client_registration.py):
        # `agent_access` says whether they may get user tokens for the MCP server
        self.registration: Any = None

    # -- /authorize -------------------------------------------------------------------------

    async def authorize(self, request: Request) -> Response:
        if request.method == "GET" and \
                f"{request.url.scheme}://{request.headers.get('host', '')}" != self.public_url:
            # the sign-in page is a passkey ceremony: served at localhost (WebAuthn refuses IPs)
            query = f"?{request.url.query}" if request.url.query else ""
            return RedirectResponse(self.public_url + request.url.path + query, status_code=302)
        form = await FormRequest.read(request, with_query=True)
        return await run_in_threadpool(self._authorize, form)

    def _authorize(self, form: FormRequest) -> Response:
        oauth_request = self.server.create_oauth2_request(form)
        try:  # authlib: client, redirect_uri, response_type, scope, PKCE
            grant = self.server.get_consent_grant(oauth_request)
        except OAuth2Error as exc:
            if exc.error == "invalid_client":  # say why (a metadata document's refusal...)
                exc.description = self.clients.unknown_reason(form.form.get("client_id", ""))
            return self._refuse(exc)
        params = form.form
        state = params.get("state")

        def fail(error: str, description: str) -> Response:
            return self._refuse(OAuth2Error(_ascii(description), error=error, state=state,
                                            redirect_uri=grant.redirect_uri))

        resource = params.get("resource") or self.mcp_resource
        if resource.rstrip("/") != self.mcp_resource:
            return fail("invalid_target", f"this tenant issues user tokens only for "
                        f"{self.mcp_resource}")
        refusal = self._registered_client_refusal(grant.client)
        if refusal:
            return fail("unauthorized_client", refusal)
        hint = params.get("login_hint")
        ceremony = params.get("passkey_ceremony")
        if ceremony:
            try:
                verified = self.passkeys.sign_in(ceremony, _credential(params))
            except PasskeyError as exc:
                self.audit.record(Decision(kind="login", outcome="refused", user=hint,
                                           reason=exc.description))
                return fail("access_denied", exc.description)
            user = self.directory.user(verified.user_id)
            email = user.user_name or "" if user else "the passkey's user"
        elif hint:
            user, email = self.directory.user_by_username(hint), hint
        else:
            return self._login_page(params, None)
        if user is None or user.id is None:
            return fail("login_required", f"{email} is not a user of this tenant")
        if not user.active:
            self.audit.record(Decision(kind="login", outcome="refused", user=email,
                                       reason="the user is deactivated"))
            return fail("access_denied", f"{email} is deactivated")
        if not ceremony:
            return self._login_page(params, user.id)
        client: Client = grant.client
        session = self.sessions.create(user.id, user.user_name or email, client.client_id)
        response: Response = self.server.create_authorization_response(
            oauth_request, grant_user=Grantee(session=session, resource=resource,
                                              nonce=params.get("nonce")), grant=grant)
        self.audit.record(Decision(kind="login", outcome="allowed", user=session.email,
                                   sid=session.sid, client_id=client.client_id))
        return response

    def _registered_client_refusal(self, client: Client) -> str | None:
        """A client that registered itself or presents a metadata document gets user tokens
        for the MCP server only when the tenant lets such clients use the agent."""
        if client.registration is None or self.registration is None or \
                self.registration.agent_access:
            return None
        return (f"{client.client_name or client.client_id} is a registered client, and this "
                "tenant does not let registered clients use the agent (the tenant admin's "
                "setting agent_access)")

    def _login_page(self, params: Mapping[str, str], user_id: str | None) -> Response:
        """The sign-in page: a passkey ceremony (the hinted user's passkeys, or any
        discoverable one), posted back to this endpoint with the request's parameters."""
        started = self.passkeys.authentication_options(user_id)
        form = {k: v for k, v in params.items()
                if k not in ("passkey_ceremony", "passkey_credential", "user")}
        return HTMLResponse(login_page({**started, "form": form,
                                        "action": f"{self.public_url}{urlsplit(self.issuer).path}"
                                                  "/authorize"}, params.get("login_hint")),
                            headers={"Cache-Control": "no-store"})

    def _refuse(self, error: OAuth2Error) -> Response:
        """An error the client may hear goes to its (validated) redirect URI with the issuer
        (RFC 6749 §4.1.2.1, RFC 9207 §2); one about the client or its redirect URI is shown to
        the user and redirects nowhere."""
        if not error.redirect_uri:
            return _error_page(error.description or error.error, 400)
        params = dict(error.get_body())
        params["iss"] = self.issuer
        return RedirectResponse(add_params_to_uri(error.redirect_uri, params), status_code=302)

    # -- the code grant's store (grants.AuthorizationCodeGrant) ---------------------------

    def save_code(self, code: str, request: Any) -> None:
        grantee: Grantee = request.user
        data = request.payload.data
        with self._lock:
            self._codes[code] = AuthorizationCode(
                client_id=request.client.client_id, redirect_uri=data["redirect_uri"],
                code_challenge=data.get("code_challenge", ""),
                code_challenge_method=data.get("code_challenge_method", ""),
                user_id=grantee.session.user_id, sid=grantee.session.sid, scope=request.scope,
                resource=grantee.resource, nonce=grantee.nonce,
                expires_at=self._clock() + CODE_TTL)

    def spend_code(self, code: str, client: Client,
                   redirect_uri: str | None) -> AuthorizationCode:
        """The code's record, spent by this presentation whatever its outcome."""
        with self._lock:
            record = self._codes.get(code)
            if record is not None:
                already_used, record.used = record.used, True
        if record is None or record.client_id != client.client_id:
            raise InvalidGrant("the authorization code is unknown or for another client")
        if already_used:
            self.sessions.end(record.sid, "authorization code replayed")
            raise InvalidGrant("the authorization code was already used; its session ended")
        if record.expires_at <= self._clock():
            raise InvalidGrant("the authorization code expired")
        if redirect_uri != record.redirect_uri:
            raise InvalidGrant("redirect_uri does not match the authorization request")
        return record

    def grantee_of_code(self, record: AuthorizationCode) -> Grantee:
        session = self.sessions.get(record.sid)
        if session is None or not session.alive:
            raise InvalidGrant("the session of this code has ended")
        return self._grantee(session, record.resource, record.nonce)

    def _grantee(self, session: Any, resource: str, nonce: str | None) -> Grantee:
        """Read at issuance: whether the user delegates to the agent (`may_act`), their name."""
        user = self.directory.user(session.user_id)
        delegated = user is not None and self.directory.delegated(user)
        return Grantee(session=session, resource=resource, nonce=nonce,
                       may_act=self.directory.agent_spiffe_id if delegated else None,
                       name=user.display_name if user else None)

    # -- the refresh grant's user side (grants.RefreshTokenGrant) -------------------------

    def spend_refresh_token(self, token: str, client: Client) -> RefreshGrant:
        refusal = self._registered_client_refusal(client)
        if refusal:
            raise UnauthorizedClientError(refusal)
        try:
            return self.tokens.use_refresh_token(token, client.client_id)
        except TokenInvalid as exc:
            raise InvalidGrant(str(exc)) from exc

    def grantee_of_refresh(self, grant: RefreshGrant, resource: str | None) -> Grantee:
        session = self.sessions.get(grant.sid)
        assert session is not None
        if (resource or grant.resource) != grant.resource:
            raise InvalidTarget("a refresh token keeps the resource it was issued for")
        return self._grantee(session, grant.resource, None)

    def id_token(self, client: Client, grantee: Grantee, access_token: str | None) -> str:
        """Signed with the client's registered id_token_signed_response_alg (RS256 unless it
        registered ES256)."""
        return self.tokens.id_token(grantee.session, client_id=client.client_id,
                                    nonce=grantee.nonce, name=grantee.name,
                                    alg=client.id_token_signed_response_alg,
                                    access_token=access_token)

    # -- RP-initiated logout ----------------------------------------------------------------

    async def end_session(self, request: Request) -> Response:
        params = dict(request.query_params)
        if request.method == "POST":
            params.update({k: str(v) for k, v in (await request.form()).items()})
        hint = params.get("id_token_hint", "")
        sid = None
        if hint:
            try:
                sid = self.tokens.decode(hint, typ="JWT", check_session=False)["sid"]
            except TokenInvalid:
                return _error_page("id_token_hint is not an ID token of this tenant", 400)
        # No id_token_hint, no session ended: a bare `sid` would let any page that can make
        # the browser fetch a URL sign the user out (OIDC RP-Initiated Logout §2 only trusts
        # the hint).
        ended = self.sessions.end(sid, "logout") if sid else False
        self.audit.record(Decision(kind="logout", outcome="accepted" if ended else "noop",
                                   sid=sid))
        target = params.get("post_logout_redirect_uri")
        client = self.clients.get(params.get("client_id", "")) if params.get("client_id") \
            else None
        if target and client and any(loopback_redirect_matches(r, target)
                                     for r in client.post_logout_redirect_uris):
            out = {"state": params["state"]} if params.get("state") else {}
            return RedirectResponse(_with_params(target, out), status_code=302)
        return HTMLResponse("<!doctype html><title>Signed out</title><h1>You are signed "
                            "out.</h1>")



# -- RFC 7662 introspection, RFC 7009 revocation: authlib's endpoints over this tenant's tokens --

@dataclass
class _Refresh:
    token: str
    grant: RefreshGrant
    alive: bool
    now: float

    def check_client(self, client: Client) -> bool:
        return self.grant.check_client(client)

    def is_expired(self) -> bool:
        return self.grant.expires_at <= self.now

    def is_revoked(self) -> bool:
        return self.grant.used or not self.alive

    def introspection(self) -> dict[str, Any]:
        g = self.grant
        return {"active": True, "token_type": "refresh_token", "sid": g.sid,
                "client_id": g.client_id, "scope": g.scope, "exp": int(g.expires_at)}


_INTROSPECTED = ("iss", "sub", "aud", "exp", "iat", "jti", "sid", "client_id", "scope", "email",
                 "act", "authorization_details", "may_act")


@dataclass
class _Access:
    """A JWT this tenant issued, already checked by TokenService.decode (signature, exp,
    revocation and, for introspection, the session)."""

    claims: dict[str, Any]

    def check_client(self, client: Client) -> bool:
        return bool(self.claims.get("client_id") == client.client_id)

    def is_expired(self) -> bool:
        return False

    def is_revoked(self) -> bool:
        return False

    def introspection(self) -> dict[str, Any]:
        return {"active": True, "token_type": "Bearer",
                **{k: self.claims[k] for k in _INTROSPECTED if k in self.claims}}


class _TenantTokens:
    def __init__(self, tokens: TokenService, sessions: SessionStore,
                 clock: Callable[[], float]) -> None:
        super().__init__()
        self.tokens = tokens
        self.sessions = sessions
        self._clock = clock

    def find(self, token: str, *, check_session: bool) -> _Refresh | _Access | None:
        refresh = self.tokens.refresh_grant(token) if token else None
        if refresh is not None:
            return _Refresh(token, refresh, self.sessions.alive(refresh.sid), self._clock())
        try:
            return _Access(self.tokens.decode(token, typ=ACCESS_TOKEN_TYP,
                                              check_session=check_session))
        except TokenInvalid:
            return None


class Introspection(_TenantTokens, IntrospectionEndpoint):  # type: ignore[misc]
    """RFC 7662 for confidential clients (§2.1: the caller must be authorized to introspect)."""

    CLIENT_AUTH_METHODS: ClassVar[list[str]] = list(CONFIDENTIAL_AUTH_METHODS)

    def query_token(self, token_string: str, token_type_hint: str | None) -> Any:
        return self.find(token_string, check_session=True)

    def check_permission(self, token: Any, client: Client, request: Any) -> bool:
        return True  # any confidential client of this tenant (the MCP server)

    def introspect_token(self, token: _Refresh | _Access) -> dict[str, Any]:
        return token.introspection()


class Revocation(_TenantTokens, RevocationEndpoint):  # type: ignore[misc]
    """RFC 7009: a client revokes its own tokens; an unknown token is not an error (§2.2)."""

    CLIENT_AUTH_METHODS: ClassVar[list[str]] = [*CONFIDENTIAL_AUTH_METHODS, "none"]

    def __init__(self, tokens: TokenService, sessions: SessionStore,
                 clock: Callable[[], float], audit: AuditTrail) -> None:
        super().__init__(tokens, sessions, clock)
        self.audit = audit

    def query_token(self, token_string: str, token_type_hint: str | None) -> Any:
        return self.find(token_string, check_session=False)

    def revoke_token(self, token: _Refresh | _Access, request: Any) -> None:
        if isinstance(token, _Refresh):
            self.tokens.revoke_refresh_token(token.token, token.grant.client_id)
        else:
            self.tokens.revoke_jti(token.claims["jti"], float(token.claims["exp"]))

    def create_endpoint_response(self, request: Any) -> Any:
        result = super().create_endpoint_response(request)
        self.audit.record(Decision(kind="revocation", outcome="accepted",
                                   client_id=request.client.client_id))
        return result

def _error_page(message: str, status: int) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><title>Error</title><h1>Sign-in error</h1>"
                        f"<p>{html.escape(message)}</p>", status_code=status)



def _credential(params: Mapping[str, str]) -> dict[str, object] | None:
    """The page's `passkey_credential`: a WebAuthn assertion as JSON (None when absent)."""
    try:
        value = json.loads(params.get("passkey_credential") or "null")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None

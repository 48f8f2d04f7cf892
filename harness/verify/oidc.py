"""The tenant's OpenID Provider for people: authorization code with PKCE, refresh, introspection,
revocation and logout.

* Authorization code flow (RFC 6749 §4.1, OpenID Connect Core §3.1) for the public client
  `iia-ui`, PKCE required with S256 (RFC 7636 §4.2; `plain` is refused). Redirect URIs on the
  loopback interface match on any port (RFC 8252 §7.3).
* The lab has no passwords: the login page lists the demo users; `login_hint` logs a script in
  without a browser. Each login starts a session (`sid`).
* Access tokens follow RFC 9068 for the resource named in `resource` (RFC 8707), the MCP server.
* Refresh tokens rotate on every use; reusing a spent one ends the session (RFC 9700 §4.14).
* Introspection (RFC 7662) for confidential clients; revocation (RFC 7009); RP-initiated logout.
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from harness.verify.audit import AuditTrail, Decision
from harness.verify.client_auth import Client, ClientRegistry
from harness.verify.directory import Directory
from harness.verify.errors import (
    NO_STORE,
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    InvalidTarget,
)
from harness.verify.sessions import SessionStore
from harness.verify.tokens import TokenInvalid, TokenService

__all__ = ["AuthorizationCode", "OidcProvider", "loopback_redirect_matches"]

CODE_TTL = 60.0


@dataclass
class AuthorizationCode:
    client_id: str
    redirect_uri: str
    code_challenge: str
    user_id: str
    sid: str
    scope: str
    resource: str
    nonce: str | None
    expires_at: float
    used: bool = False


def loopback_redirect_matches(registered: str, presented: str) -> bool:
    """Exact match, except that a loopback IP redirect URI matches on any port (RFC 8252 §7.3)."""
    if registered == presented:
        return True
    r, p = urlsplit(registered), urlsplit(presented)
    if r.scheme != "http" or p.scheme != "http" or r.hostname not in ("127.0.0.1", "[::1]"):
        return False
    return (r.hostname == p.hostname and r.path == p.path and r.query == p.query
            and not p.fragment)


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(
        b"=").decode()


def _with_params(uri: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(uri)
    query = "&".join(filter(None, [parts.query, urlencode(params)]))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


class OidcProvider:
    def __init__(self, *, issuer: str, mcp_resource: str, clients: ClientRegistry,
                 directory: Directory, sessions: SessionStore, tokens: TokenService,
                 audit: AuditTrail, clock: Callable[[], float] = time.time) -> None:
        self.issuer = issuer
        self.mcp_resource = mcp_resource
        self.clients = clients
        self.directory = directory
        self.sessions = sessions
        self.tokens = tokens
        self.audit = audit
        self._clock = clock
        self._lock = threading.Lock()
        self._codes: dict[str, AuthorizationCode] = {}

    # -- /authorize -------------------------------------------------------------------------

    async def authorize(self, request: Request) -> Response:
        params = dict(request.query_params)
        if request.method == "POST":
            params.update({k: str(v) for k, v in (await request.form()).items()})
        client = self.clients.get(params.get("client_id", ""))
        if client is None:
            return _error_page("unknown client_id", 400)
        redirect_uri = params.get("redirect_uri", "")
        if not any(loopback_redirect_matches(r, redirect_uri) for r in client.redirect_uris):
            return _error_page("redirect_uri is not registered for this client", 400)
        state = params.get("state")

        def fail(error: str, description: str) -> Response:
            out = {"error": error, "error_description": description}
            if state:
                out["state"] = state
            return RedirectResponse(_with_params(redirect_uri, out), status_code=302)

        if params.get("response_type") != "code":
            return fail("unsupported_response_type", "only response_type=code is supported")
        if "authorization_code" not in client.grant_types:
            return fail("unauthorized_client", "this client may not use the code flow")
        challenge = params.get("code_challenge", "")
        method = params.get("code_challenge_method")
        if not challenge:
            return fail("invalid_request", "PKCE is required: send code_challenge (S256)")
        if method != "S256":
            return fail("invalid_request", "code_challenge_method must be S256; plain is "
                        "refused")
        resource = params.get("resource") or self.mcp_resource
        if resource.rstrip("/") != self.mcp_resource:
            return fail("invalid_target", f"this tenant issues user tokens only for "
                        f"{self.mcp_resource}")
        email = params.get("login_hint") or params.get("user")
        if not email:
            return _login_page(self.directory, params)
        user = self.directory.user_by_username(email)
        if user is None or user.id is None:
            return fail("login_required", f"{email} is not a user of this tenant")
        if not user.active:
            self.audit.record(Decision(kind="login", outcome="refused", user=email,
                                       reason="the user is deactivated"))
            return fail("access_denied", f"{email} is deactivated")
        session = self.sessions.create(user.id, user.user_name or email, client.client_id)
        code = secrets.token_urlsafe(32)
        with self._lock:
            self._codes[code] = AuthorizationCode(
                client_id=client.client_id, redirect_uri=redirect_uri, code_challenge=challenge,
                user_id=user.id, sid=session.sid, scope=params.get("scope", "openid"),
                resource=resource, nonce=params.get("nonce"),
                expires_at=self._clock() + CODE_TTL)
        self.audit.record(Decision(kind="login", outcome="allowed", user=session.email,
                                   sid=session.sid, client_id=client.client_id))
        out = {"code": code, "iss": self.issuer}  # RFC 9207 issuer identification
        if state:
            out["state"] = state
        return RedirectResponse(_with_params(redirect_uri, out), status_code=302)

    # -- token endpoint grants --------------------------------------------------------------

    def _issue(self, client: Client, session: Any, *, scope: str, resource: str,
               nonce: str | None) -> JSONResponse:
        user = self.directory.user(session.user_id)
        delegated = user is not None and self.directory.delegated(user)
        access, claims = self.tokens.access_token(
            session, client_id=client.client_id, audience=resource, scope=scope,
            may_act=self.directory.agent_spiffe_id if delegated else None)
        body: dict[str, Any] = {"access_token": access, "token_type": "Bearer",
                                "expires_in": claims["exp"] - claims["iat"], "scope": scope}
        if "openid" in scope.split():
            body["id_token"] = self.tokens.id_token(
                session, client_id=client.client_id, nonce=nonce,
                name=user.display_name if user else None)
        if "refresh_token" in client.grant_types:
            body["refresh_token"] = self.tokens.refresh_token(
                session, client_id=client.client_id, scope=scope, resource=resource)
        return JSONResponse(body, headers=NO_STORE)

    def authorization_code(self, client: Client, form: Mapping[str, str]) -> JSONResponse:
        code = form.get("code", "")
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
        if form.get("redirect_uri") != record.redirect_uri:
            raise InvalidGrant("redirect_uri does not match the authorization request")
        verifier = form.get("code_verifier", "")
        if not verifier:
            raise InvalidRequest("code_verifier is required (PKCE)")
        if not secrets.compare_digest(_s256(verifier), record.code_challenge):
            raise InvalidGrant("code_verifier does not match the code_challenge")
        session = self.sessions.get(record.sid)
        if session is None or not session.alive:
            raise InvalidGrant("the session of this code has ended")
        return self._issue(client, session, scope=record.scope, resource=record.resource,
                           nonce=record.nonce)

    def refresh(self, client: Client, form: Mapping[str, str]) -> JSONResponse:
        try:
            grant = self.tokens.use_refresh_token(form.get("refresh_token", ""),
                                                  client.client_id)
        except TokenInvalid as exc:
            raise InvalidGrant(str(exc)) from exc
        session = self.sessions.get(grant.sid)
        assert session is not None
        resource = form.get("resource") or grant.resource
        if resource != grant.resource:
            raise InvalidTarget("a refresh token keeps the resource it was issued for")
        return self._issue(client, session, scope=grant.scope, resource=resource, nonce=None)

    # -- RFC 7662 introspection, RFC 7009 revocation -----------------------------------------

    def introspect(self, client: Client, form: Mapping[str, str]) -> JSONResponse:
        if client.public:
            raise InvalidClient("introspection is for confidential clients (RFC 7662 §2.1)")
        token = form.get("token", "")
        body: dict[str, Any] = {"active": False}
        refresh = self.tokens.refresh_grant(token) if token else None
        if refresh is not None:
            if not refresh.used and refresh.expires_at > self._clock() and self.sessions.alive(
                    refresh.sid):
                body = {"active": True, "token_type": "refresh_token", "sid": refresh.sid,
                        "client_id": refresh.client_id, "scope": refresh.scope,
                        "exp": int(refresh.expires_at)}
        elif token:
            try:
                claims = self.tokens.decode(token, typ="at+jwt")
            except TokenInvalid:
                claims = None
            if claims is not None:
                body = {"active": True, "token_type": "Bearer", **{
                    k: claims[k] for k in ("iss", "sub", "aud", "exp", "iat", "jti", "sid",
                                           "client_id", "scope", "email", "act",
                                           "authorization_details", "may_act") if k in claims}}
        return JSONResponse(body, headers=NO_STORE)

    def revoke(self, client: Client, form: Mapping[str, str]) -> Response:
        token = form.get("token", "")
        if not token:
            raise InvalidRequest("token is required")
        if not self.tokens.revoke_refresh_token(token, client.client_id):
            try:
                claims = self.tokens.decode(token, typ="at+jwt", check_session=False)
            except TokenInvalid:
                claims = None  # RFC 7009 §2.2: unknown tokens are not an error
            if claims is not None and claims.get("client_id") == client.client_id:
                self.tokens.revoke_jti(claims["jti"], float(claims["exp"]))
        self.audit.record(Decision(kind="revocation", outcome="accepted",
                                   client_id=client.client_id))
        return Response(status_code=200, headers=NO_STORE)

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


def _error_page(message: str, status: int) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><title>Error</title><h1>Sign-in error</h1>"
                        f"<p>{html.escape(message)}</p>", status_code=status)


def _login_page(directory: Directory, params: Mapping[str, str]) -> HTMLResponse:
    hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                     for k, v in params.items() if k not in ("user", "login_hint"))
    rows = []
    for user in directory.users():
        if not user.active:
            continue
        rows.append(
            f'<li><button name="user" value="{html.escape(user.user_name or "")}">'
            f'{html.escape(user.display_name or "")}</button> '
            f'<small>{html.escape(user.user_name or "")} - {html.escape(user.title or "")}'
            f"</small></li>")
    return HTMLResponse(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Sign in - IBM Verify "
        "(lab)</title><style>body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem "
        "auto}li{margin:.3rem 0;list-style:none}button{min-width:12rem}</style></head><body>"
        "<h1>Sign in</h1><p>This lab tenant has no passwords: choose who you are.</p>"
        f"<form method='post' action='authorize'>{hidden}<ul>{''.join(rows)}</ul></form>"
        "</body></html>")

"""The simulated IBM Verify tenant: composition of its parts and its HTTP surface.

Paths mirror a Verify tenant: the OpenID Provider under `/oidc/endpoint/default`, the admin API
under `/v2.0/`. Lab-only helpers (the push "phone", the audit trail) live under `/lab/`.

    /oidc/endpoint/default/.well-known/openid-configuration   discovery (+ RFC 8414 metadata)
    /oidc/endpoint/default/{authorize,token,jwks,introspect,revoke,logout,bc-authorize}
    /oidc/endpoint/default/register   RFC 7591 dynamic client registration (public clients;
                          client_registration.py); an https client_id is a Client ID Metadata
                          Document (client_metadata_document.py)
    /v2.0/...             admin API: SCIM Users/Groups, applications, access policies
    /v1.0/ssf/events      SSF push receiver (CAEP session-revoked)
    /.well-known/ssf-configuration, /v1.0/ssf/{jwks,streams,status,verify}   the tenant's own
                          SSF 1.0 transmitter (ssf_transmitter.py): every session that ends
                          here is a CAEP session-revoked pushed to its subscribers; stream
                          management by a client credentials token with scope ssf.manage
    /lab/phone            the user's Verify app: passkey sign-in, pending pushes, Approve / Deny
                          signed by a passkey assertion bound to the push (verify_app.py);
                          /lab/enroll a passkey; /lab/decisions audit trail
    /lab/delegations      who delegated to the agent; POST /lab/delegations/{email}/revoke|grant
                          is the tenant admin withdrawing or restoring a user's delegation
    POST /lab/credential/rotate   the MCP server's client secret rotated into Vault now (after a
                          Vault restart lost it); loopback callers only, the secret never in the
                          answer
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oauth2.rfc9207 import AuthorizationServerMetadata as IssuerMetadata
from authlib.oidc.discovery import OpenIDProviderMetadata
from scim2_models import User
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from harness.keyset import RotatingKeySet
from harness.verify.admin_api import AdminApi
from harness.verify.approvals import Approvals
from harness.verify.audit import AuditTrail, Decision
from harness.verify.audit_journal import JournaledAuditTrail
from harness.verify.authorization_server import VerifyAuthorizationServer
from harness.verify.capacity import Saturated, TokenGate, load_capacity
from harness.verify.ciba import DELIVERY_MODES, Ciba, PushLimits, ciba_delivery
from harness.verify.ciba_withdrawal import WITHDRAW_PATH, CibaWithdrawal
from harness.verify.client_auth import (
    CONFIDENTIAL_AUTH_METHODS,
    SCOPES_SUPPORTED,
    Client,
    ClientRegistry,
    IssuedClientSecret,
    client_scopes,
    id_token_alg,
)
from harness.verify.client_metadata_document import MetadataDocuments
from harness.verify.client_registration import (
    ClientRegistration,
    RegisteredClients,
    load_registration_settings,
)
from harness.verify.directory import Directory
from harness.verify.grants import (
    AuthorizationCodeGrant,
    CibaGrant,
    ClientCredentialsGrant,
    RefreshTokenGrant,
    S256CodeChallenge,
    TokenExchangeGrant,
    bound,
)
from harness.verify.oidc import Introspection, OidcProvider, Revocation, TenantIssuer
from harness.verify.passkeys import RelyingParty, user_facing_url
from harness.verify.policy import TokenExchangePolicy
from harness.verify.rar import RarRegistry
from harness.verify.rotation import CredentialStoreError, RotatingClientSecret
from harness.verify.sessions import SessionStore
from harness.verify.spiffe_bundle import SpiffeBundleSource
from harness.verify.ssf_receiver import SsfReceiver
from harness.verify.ssf_transmitter import ManagementTokens, SsfTransmitter
from harness.verify.token_exchange import TokenExchange
from harness.verify.tokens import ID_TOKEN_ALGS, TokenService
from harness.verify.verify_app import VerifyApp
from iia.audit_trail import AuditJournal

__all__ = ["OIDC_BASE", "VerifyTenant", "load_push_limits"]

OIDC_BASE = "/oidc/endpoint/default"


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def load_push_limits(fixtures: Path) -> PushLimits:
    """The tenant's per-user push limits from fixtures/tenant/push_limits.json (keys starting
    with `_` are comments); without the file, the defaults."""
    path = fixtures / "tenant" / "push_limits.json"
    if not path.exists():
        return PushLimits()
    doc = json.loads(path.read_text())
    values = {k: v for k, v in doc.items() if not k.startswith("_")}
    known = {"max_pending", "max_per_minute"}
    if set(values) - known:
        raise ValueError(f"{path.name}: unknown settings {sorted(set(values) - known)} "
                         f"(known: {sorted(known)})")
    try:
        return PushLimits(**values)
    except ValueError as exc:
        raise ValueError(f"{path.name}: {exc}") from exc


def load_clients(fixtures: Path, mcp_secret: RotatingClientSecret,
                 mcp_resource: str = "") -> ClientRegistry:
    """The tenant's clients; a relative backchannel_client_notification_endpoint (CIBA ping)
    is resolved against the MCP server's URL, the one address of it the tenant is given."""
    doc = json.loads((fixtures / "tenant" / "clients.json").read_text())
    clients = {}
    for raw in doc["clients"]:
        mode, notify = ciba_delivery(raw, mcp_resource)
        secret: RotatingClientSecret | IssuedClientSecret | None = (
            mcp_secret if raw.get("secret") == "vault" else
            IssuedClientSecret(raw["client_id"]) if raw.get("secret") == "generated" else None)
        if not raw["public"] and secret is None:
            raise ValueError(f"confidential client {raw['client_id']} needs its secret in Vault "
                             "or generated at start")
        if secret is not None and secret.client_id != raw["client_id"]:
            raise ValueError("the Vault-held secret belongs to another client")
        clients[raw["client_id"]] = Client(
            client_id=raw["client_id"], public=bool(raw["public"]),
            grant_types=frozenset(raw["grant_types"]),
            redirect_uris=tuple(raw.get("redirect_uris", ())),
            post_logout_redirect_uris=tuple(raw.get("post_logout_redirect_uris", ())),
            secret=secret, backchannel_token_delivery_mode=mode,
            backchannel_client_notification_endpoint=notify,
            scopes=client_scopes(raw), id_token_signed_response_alg=id_token_alg(raw))
    return ClientRegistry(clients)


class VerifyTenant:
    def __init__(
        self,
        base_url: str,
        *,
        fixtures: Path,
        mcp_client_secret: RotatingClientSecret,
        mcp_resource: str,
        spiffe_keys_url: str,
        trust_domain: str = "iia.lab",
        access_token_ttl: int = 900,
        obo_token_ttl: int = 900,
        key_rotation_period: float = 24 * 3600.0,
        approval_timeout: float = 120.0,
        clock: Callable[[], float] = time.time,
        audit_journal: AuditJournal | None = None,
    ) -> None:
        """`audit_journal`: also append every decision to the durable audit trail."""
        self.base_url = base_url.rstrip("/")
        self.issuer = f"{self.base_url}{OIDC_BASE}"
        self.admin_api_url = f"{self.base_url}/v2.0"
        self.mcp_resource = mcp_resource.rstrip("/")
        self.fixtures = fixtures
        self._clock = clock
        # ES256 for every token, RS256 besides for the ID tokens of clients that want it
        self.keys = RotatingKeySet(rotation_period=key_rotation_period,
                                   retain=max(access_token_ttl, obo_token_ttl) + 60, clock=clock,
                                   algs=("ES256", "RS256"))
        self.audit = AuditTrail() if audit_journal is None else JournaledAuditTrail(
            audit_journal, self._display_name)
        self.directory = Directory(fixtures)
        self.sessions = SessionStore(clock)
        self.tokens = TokenService(self.issuer, self.keys, self.sessions,
                                   access_ttl=access_token_ttl, obo_ttl=obo_token_ttl,
                                   clock=clock)
        self.mcp_client_secret = mcp_client_secret
        self.clients = load_clients(fixtures, mcp_client_secret, self.mcp_resource)
        # clients the tenant did not configure: RFC 7591 registrations, metadata documents
        self.registration_settings = load_registration_settings(fixtures)
        rs = self.registration_settings
        self.registered = RegisteredClients(max_clients=rs.max_clients, idle_ttl=rs.idle_ttl,
                                            clock=clock)
        self.metadata_documents = MetadataDocuments(rs, self.audit, clock=clock)
        self.clients.sources = [self.registered, self.metadata_documents]
        self.registration = ClientRegistration(rs, self.registered, self.audit)
        self.registry = RarRegistry(fixtures / "policy" / "rar_types.json")
        self.policy = TokenExchangePolicy(fixtures / "policy" / "token_exchange.cedar",
                                          self.registry)
        self.approvals = Approvals(request_ttl=approval_timeout, clock=clock)
        self.spiffe = SpiffeBundleSource(trust_domain, spiffe_keys_url)
        self.server = VerifyAuthorizationServer(clients=self.clients, tokens=self.tokens,
                                                scopes_supported=SCOPES_SUPPORTED)
        # the token endpoint's capacity (fixtures/tenant/capacity.json): past it, 503 busy
        self.token_gate = TokenGate(load_capacity(fixtures))
        # the WebAuthn relying party: RP ID localhost, origin http://localhost:PORT
        self.passkeys = RelyingParty(origin=user_facing_url(self.base_url), clock=clock)
        self.oidc = OidcProvider(issuer=self.issuer, mcp_resource=self.mcp_resource,
                                 clients=self.clients, directory=self.directory,
                                 sessions=self.sessions, tokens=self.tokens, audit=self.audit,
                                 server=self.server, passkeys=self.passkeys, clock=clock)
        self.oidc.registration = self.registration_settings
        self.exchange = TokenExchange(
            issuer=self.issuer, mcp_resource=self.mcp_resource,
            admin_api_url=self.admin_api_url, tokens=self.tokens, directory=self.directory,
            registry=self.registry, policy=self.policy, approvals=self.approvals,
            audit=self.audit, spiffe=self.spiffe, trusted_domains=frozenset({trust_domain}),
            clock=clock)
        self.ciba = Ciba(directory=self.directory, sessions=self.sessions, tokens=self.tokens,
                         registry=self.registry, approvals=self.approvals, audit=self.audit,
                         admin_api_url=self.admin_api_url, mcp_resource=self.mcp_resource,
                         clock=clock, push_limits=load_push_limits(fixtures))
        self.withdrawal = CibaWithdrawal(approvals=self.approvals, audit=self.audit)
        self.verify_app = VerifyApp(base_url=self.base_url, rp=self.passkeys,
                                    approvals=self.approvals, ciba=self.ciba,
                                    directory=self.directory, audit=self.audit, clock=clock)
        self.ssf = SsfReceiver(issuer=self.issuer, directory=self.directory,
                               sessions=self.sessions, audit=self.audit)
        self.ssf_tokens = ManagementTokens(
            clock, issuer=self.issuer, sign=lambda claims: self.keys.sign(claims, typ="at+jwt"))
        self.transmitter = SsfTransmitter(base_url=self.base_url, oidc_issuer=self.issuer,
                                          sessions=self.sessions, audit=self.audit,
                                          tokens=self.ssf_tokens, clock=clock)
        self.verify_app.on_enrolled = lambda user_id: self.transmitter.credential_created(
            user_id, "a passkey enrolled in the Verify app")
        self.admin_api = AdminApi(directory=self.directory, tokens=self.tokens,
                                  sessions=self.sessions, registry=self.registry,
                                  audit=self.audit, base_url=self.admin_api_url, clock=clock)
        # the token endpoint's grants on authlib's server, in the order discovery lists them
        self._grants = (bound(AuthorizationCodeGrant, self.oidc),
                        bound(RefreshTokenGrant, self.oidc),
                        bound(TokenExchangeGrant, self.exchange), bound(CibaGrant, self.ciba),
                        bound(ClientCredentialsGrant, self.ssf_tokens))
        for grant in self._grants:
            self.server.register_grant(
                grant, [S256CodeChallenge()] if grant.GRANT_TYPE == "authorization_code" else None)
        self.server.register_extension(TenantIssuer(self.issuer))
        self.server.register_endpoint(Introspection(self.tokens, self.sessions, clock))
        self.server.register_endpoint(Revocation(self.tokens, self.sessions, clock, self.audit))
        self._metadata = self._validated(self._build_metadata())

    # -- discovery --------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    @staticmethod
    def _validated(metadata: dict[str, Any]) -> dict[str, Any]:
        """RFC 8414 (+ RFC 9207) and OpenID Connect Discovery §3, checked by authlib's strict
        validators when the tenant starts: a document a client would reject never goes out."""
        AuthorizationServerMetadata(metadata).validate(metadata_classes=[IssuerMetadata])
        OpenIDProviderMetadata(metadata).validate()
        return metadata

    def _build_metadata(self) -> dict[str, Any]:
        i = self.issuer
        rs = self.registration_settings
        registration: dict[str, Any] = {
            "client_id_metadata_document_supported": rs.metadata_documents}
        if rs.dynamic_registration:
            registration["registration_endpoint"] = f"{i}/register"  # RFC 7591, RFC 8414 §2
        return {
            "issuer": i,
            "authorization_endpoint": f"{i}/authorize",
            "token_endpoint": f"{i}/token",
            "jwks_uri": f"{i}/jwks",
            "introspection_endpoint": f"{i}/introspect",
            "revocation_endpoint": f"{i}/revoke",
            "end_session_endpoint": f"{i}/logout",
            "backchannel_authentication_endpoint": f"{i}/bc-authorize",
            "backchannel_token_delivery_modes_supported": list(DELIVERY_MODES),
            "backchannel_user_code_parameter_supported": False,
            "backchannel_withdrawal_endpoint": f"{i}{WITHDRAW_PATH}",
            "grant_types_supported": [g.GRANT_TYPE for g in self._grants],
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": [*CONFIDENTIAL_AUTH_METHODS, "none"],
            "introspection_endpoint_auth_methods_supported": Introspection.CLIENT_AUTH_METHODS,
            "revocation_endpoint_auth_methods_supported": Revocation.CLIENT_AUTH_METHODS,
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": list(ID_TOKEN_ALGS),
            "scopes_supported": list(SCOPES_SUPPORTED),
            "claims_supported": ["sub", "email", "name", "sid", "may_act"],
            "authorization_details_types_supported": self.registry.supported_types(),
            "authorization_response_iss_parameter_supported": True,
            "resource_indicators_supported": True,
            "admin_api": self.admin_api_url,
            "ssf_receiver_endpoint": f"{self.base_url}/v1.0/ssf/events",
            **registration,
        }

    async def discovery(self, request: Request) -> JSONResponse:
        return JSONResponse(self.metadata())

    async def jwks(self, request: Request) -> JSONResponse:
        return JSONResponse(self.keys.jwks(use="sig"), headers={"Cache-Control": "max-age=60"})

    # -- endpoints that authenticate the client: authlib's server ------------------------

    async def token(self, request: Request) -> Response:
        """The token endpoint, within its capacity (harness/verify/capacity.py): a request
        holds its slot from its headers to its answer; one turned away is not read."""
        try:
            async with self.token_gate.slot():
                return await self.server.token(request)
        except Saturated:
            return self.token_gate.busy()

    async def introspect(self, request: Request) -> Response:
        return await self.server.endpoint(Introspection.ENDPOINT_NAME, request)

    async def revoke(self, request: Request) -> Response:
        return await self.server.endpoint(Revocation.ENDPOINT_NAME, request)

    async def bc_authorize(self, request: Request) -> Response:
        """CIBA §7.1: no token grant, but the client authenticates as at the token endpoint."""
        return await self.server.with_client(
            request, [*CONFIDENTIAL_AUTH_METHODS, "none"], "backchannel_authentication",
            self.ciba.authorize)

    async def bc_withdraw(self, request: Request) -> Response:
        """Withdraw a CIBA request (harness/verify/ciba_withdrawal.py): the client
        authenticates as at bc-authorize."""
        return await self.server.with_client(
            request, list(CONFIDENTIAL_AUTH_METHODS), "backchannel_withdrawal",
            self.withdrawal.withdraw)

    # -- lab helpers ------------------------------------------------------------------------

    async def decisions(self, request: Request) -> JSONResponse:
        kind = request.query_params.get("kind")
        return JSONResponse([d.to_dict() for d in self.audit.decisions(kind)])

    # -- delegation: a tenant admin's switch, read live by every token exchange -------------

    def set_delegation(self, email: str, delegated: bool) -> dict[str, Any] | None:
        """Grant or withdraw `email`'s delegation to the agent (None: no such user).

        Withdrawing does not end the user's sessions (they are the user's sign-in, not the
        agent's authority; every exchange checks the record live, so the very next one fails):
        it drops the session consents and unused call approvals the user gave the agent, which
        a later grant does not bring back."""
        user = self.directory.user_by_username(email)
        if user is None or user.id is None:
            return None
        live = [] if delegated else [s for s in self.sessions.sessions_of(user.id) if s.alive]
        changed = self.directory.set_delegated(user, delegated)
        if changed and not delegated:
            self.transmitter.delegation_withdrawn(user.id, live)
        voided = (0, 0) if delegated else self.approvals.void_user(user.id)
        self.audit.record(Decision(
            kind="delegation", outcome="granted" if delegated else "revoked",
            user=user.user_name, actor=self.directory.agent_spiffe_id,
            reason=("the tenant admin restored the user's delegation to the agent" if delegated
                    else "the tenant admin withdrew the user's delegation to the agent"),
            details={"changed": changed, "voided_consents": voided[0],
                     "voided_call_approvals": voided[1]}))
        return self._delegation(user)

    def _delegation(self, user: User[Any]) -> dict[str, Any]:
        return {"user": user.user_name, "agent": self.directory.agent_spiffe_id,
                "delegated": self.directory.delegated(user)}

    async def delegations(self, request: Request) -> JSONResponse:
        return JSONResponse([self._delegation(u) for u in self.directory.users()])

    async def change_delegation(self, request: Request) -> JSONResponse:
        email = request.path_params["email"]
        action = request.path_params["action"]
        if action not in ("revoke", "grant"):
            return JSONResponse({"error": "not_found", "error_description":
                                 f"no delegation action {action!r} (revoke or grant)"},
                                status_code=404)
        result = self.set_delegation(email, action == "grant")
        if result is None:
            return JSONResponse({"error": "not_found",
                                 "error_description": f"no user {email} in this tenant"},
                                status_code=404)
        return JSONResponse(result)

    # -- clients the tenant did not configure: may they use the agent? ----------------------

    def set_registered_client_access(self, allowed: bool) -> int:
        """The tenant admin's switch (fixtures/tenant/client_registration.json `agent_access`):
        may clients that registered themselves or present a metadata document get user tokens
        for the MCP server? Switching it off also ends their live sessions (every token of them
        dies with its session); returns how many ended."""
        self.registration_settings.agent_access = allowed
        ended = 0 if allowed else len(self.sessions.end_where(
            lambda s: (c := self.clients.get(s.client_id)) is not None
            and c.registration is not None,
            "the tenant admin no longer lets registered clients use the agent"))
        self.audit.record(Decision(
            kind="client_registration", outcome="agent_access_on" if allowed
            else "agent_access_off", details={"ended_sessions": ended},
            reason=("registered clients may use the agent" if allowed else
                    "registered clients may no longer use the agent")))
        return ended

    # -- the lab operator's rotation of the Vault-held credential --------------------------

    async def rotate_credential(self, request: Request) -> JSONResponse:
        """Write a fresh client secret of the MCP server's client to Vault (the supervisor
        calls this after Vault restarted empty). Loopback callers only; the answer says which
        client and where the secret is, never the secret."""
        peer = request.client.host if request.client else ""
        if not _loopback(peer):
            return JSONResponse({"error": "access_denied", "error_description":
                                 "the lab's credential rotation answers loopback callers only"},
                                status_code=403)
        secret = self.mcp_client_secret
        try:
            version = await run_in_threadpool(secret.rotate)
        except CredentialStoreError as exc:  # the operator's rotation: the sentence as is
            return JSONResponse({"error": "temporarily_unavailable", "dependency": "vault",
                                 "error_description": str(exc)}, status_code=503,
                                headers={"Retry-After": "1"})
        return JSONResponse({"client_id": secret.client_id, "rotated": True,
                             "secret": f"in Vault at {secret.location}", "version": version})

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    def _display_name(self, email: str) -> str | None:
        """The person's display name, for the audit trail (None when not in the directory)."""
        user = self.directory.user_by_username(email)
        return user.display_name if user is not None else None

    def app(self) -> Starlette:
        b = OIDC_BASE
        return Starlette(routes=[
            Route(f"{b}/.well-known/openid-configuration", self.discovery),
            Route(f"/.well-known/oauth-authorization-server{b}", self.discovery),
            Route(f"{b}/jwks", self.jwks),
            Route(f"{b}/authorize", self.oidc.authorize, methods=["GET", "POST"]),
            Route(f"{b}/token", self.token, methods=["POST"]),
            Route(f"{b}/introspect", self.introspect, methods=["POST"]),
            Route(f"{b}/revoke", self.revoke, methods=["POST"]),
            Route(f"{b}/logout", self.oidc.end_session, methods=["GET", "POST"]),
            Route(f"{b}/bc-authorize", self.bc_authorize, methods=["POST"]),
            Route(f"{b}/register", self.registration.register, methods=["POST"]),
            Route(f"{b}{WITHDRAW_PATH}", self.bc_withdraw, methods=["POST"]),
            Route("/v1.0/ssf/events", self.ssf.push, methods=["POST"]),
            *self.transmitter.routes(),
            *self.verify_app.routes(),
            Route("/lab/decisions", self.decisions),
            Route("/lab/delegations", self.delegations),
            Route("/lab/delegations/{email}/{action:str}", self.change_delegation,
                  methods=["POST"]),
            Route("/lab/credential/rotate", self.rotate_credential, methods=["POST"]),
            Route("/healthz", self.health),
            Mount("/v2.0", app=self.admin_api.app()),
        ], exception_handlers={CredentialStoreError: vault_unavailable})


async def vault_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The tenant's own secret store failed (RotatingClientSecret could not write the rotated
    secret of the MCP server's client, at the token endpoint or anywhere a client
    authenticates): RFC 6749's `temporarily_unavailable` as a 503 with Retry-After, naming
    Vault, never a 500. Nothing was issued; the secret that was current stays current, so
    the client's retry with it succeeds once Vault is back."""
    return JSONResponse(
        {"error": "temporarily_unavailable", "dependency": "vault",
         "error_description": f"the identity provider's secret store (Vault) is unavailable, "
                              f"nothing was issued: {exc}"},
        status_code=503, headers={"Retry-After": "1", "Cache-Control": "no-store"})

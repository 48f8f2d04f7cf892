"""A SET receiver written from the specs, for the tests: it imports nothing of `iia.antenna` or
`iia.ssf`, only a JWT library, so it checks Antenna the way an outside receiver would.

* SSF 1.0 §7 discovery: `/.well-known/ssf-configuration` gives `issuer` and `jwks_uri`; the
  stream is created at `configuration_endpoint` with the management auth of `auth_headers`: an
  OAuth 2.0 access token (the transmitter's `authorization_schemes`: `urn:ietf:rfc:6749`, as
  the CAEP Interoperability Profile says) that `client_credentials_token` gets from the IdP
  (OpenID discovery, RFC 6749 §4.4, scope `ssf.manage`, RFC 8707 `resource` = the
  transmitter's issuer).
* RFC 8935 push: `SpecReceiver` is an HTTP endpoint on loopback. Every SET is validated
  (`check_set`): a JWS with `typ: secevent+jwt` (RFC 8417 §2.3), signed by a key of the
  transmitter's JWKS (by `kid`; ES256 or RS256), `iss` the transmitter, `aud` the stream's,
  `iat` present (a number, not in the future beyond 30 s), `jti` present and unique, exactly one
  event (SSF 1.0 §4.1.8 / CAEP 1.0), no `sub` and no `exp` at top level (SSF §4.1.5, RFC 8417
  §2.2), and `sub_id` an RFC 9493 subject identifier (or SSF's `complex` of them). A valid SET
  is answered 202; an invalid one 400 `{"err", "description"}` (RFC 8935 §2.3) and recorded in
  `errors`. The same SET sent again (same `jti`, same claims) is a retransmission after a lost
  acknowledgement (at least once): answered 202 and counted in `duplicates`, not accepted twice;
  a different SET reusing a `jti` is an error.
* RFC 8936 poll: `poll` acknowledges and fetches, validating each SET the same way.
* `stop()` / `start()` take the endpoint down and bring it back on the same port (an outage).
* CAEP Interoperability Profile: SETs signed with ES256 or RS256, the key picked by `kid` and
  the header's `alg` the key's own (a JWKS entry's `alg`, or its `kty`: EC for ES256, RSA for
  RS256); `SetChecker(algs=...)` narrows it to what the stream asked for (`set_signing_alg`).

Run as its own process (`python -m tests.spec_receiver`, `main`): it reads its client secret
from the first line of stdin (never argv), gets a token from the IdP, creates a push stream to
its own endpoint, prints the stream as one JSON line, asks for a verification SET, then prints
one JSON line per SET it accepts (`{"set": claims, "alg": ...}`) until stdin closes.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt

SET_TYP = "secevent+jwt"
ALGS = ("ES256", "RS256")
# RFC 9493 §3.2 formats and their required members
FORMATS: dict[str, tuple[str, ...]] = {
    "account": ("uri",), "email": ("email",), "iss_sub": ("iss", "sub"), "opaque": ("id",),
    "phone_number": ("phone_number",), "did": ("url",), "uri": ("uri",),
    "aliases": ("identifiers",)}
COMPLEX_MEMBERS = ("user", "device", "session", "application", "tenant", "org_unit", "group")


KEY_TYPES = {"ES256": "EC", "RS256": "RSA"}
MANAGE_SCOPE = "ssf.manage"


def auth_headers(token: str) -> dict[str, str]:
    """Management auth for SSF stream management: an OAuth 2.0 bearer token (RFC 6750)."""
    return {"Authorization": f"Bearer {token}"}


def client_credentials_token(idp_issuer: str, client_id: str, secret: str,
                             resource: str, scope: str = MANAGE_SCOPE) -> str:
    """RFC 6749 §4.4 at the IdP's token endpoint (OpenID discovery), HTTP Basic client auth,
    for `resource` (RFC 8707): the access token."""
    meta = httpx.get(f"{idp_issuer.rstrip('/')}/.well-known/openid-configuration",
                     timeout=10).json()
    response = httpx.post(meta["token_endpoint"], auth=(client_id, secret), timeout=10,
                          data={"grant_type": "client_credentials", "scope": scope,
                                "resource": resource})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"].lower() == "bearer" and scope in body.get("scope", scope).split()
    return str(body["access_token"])


def discover(transmitter: str) -> dict[str, Any]:
    config = httpx.get(f"{transmitter.rstrip('/')}/.well-known/ssf-configuration",
                       timeout=10).json()
    assert config["spec_version"] == "1_0" and config["issuer"] == transmitter.rstrip("/")
    return dict(config)


def subscribe(config: Mapping[str, Any], token: str, delivery: dict[str, Any],
              events: list[str], aud: str | None = None,
              alg: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"delivery": delivery, "events_requested": events}
    if aud is not None:
        body["aud"] = aud
    if alg is not None:
        body["set_signing_alg"] = alg
    response = httpx.post(config["configuration_endpoint"], json=body,
                          headers=auth_headers(token), timeout=10)
    assert response.status_code in (200, 201), response.text
    stream = dict(response.json())
    assert stream["iss"] == config["issuer"]
    assert set(stream["events_delivered"]) <= set(events)
    return stream


def check_subject(sub_id: Any, nested: bool = False) -> None:
    if not isinstance(sub_id, dict) or not isinstance(sub_id.get("format"), str):
        raise ValueError("sub_id must be an object with a format (RFC 9493 §3)")
    fmt = sub_id["format"]
    if fmt == "complex" and not nested:  # SSF 1.0 §3.2
        members = [k for k in sub_id if k != "format"]
        if not members or any(k not in COMPLEX_MEMBERS for k in members):
            raise ValueError(f"complex sub_id with unknown or no members: {members}")
        for k in members:
            check_subject(sub_id[k], nested=True)
        return
    if fmt not in FORMATS:
        raise ValueError(f"unknown sub_id format {fmt!r}")
    for member in FORMATS[fmt]:
        if member not in sub_id:
            raise ValueError(f"sub_id format {fmt} needs {member}")
    if fmt == "email" and "@" not in str(sub_id["email"]):
        raise ValueError("sub_id email is not an e-mail address")
    if fmt == "account" and not str(sub_id["uri"]).startswith("acct:"):
        raise ValueError("sub_id account uri must be acct:")


class SetChecker:
    """Validates SETs of one stream against the transmitter's published keys."""

    def __init__(self, config: Mapping[str, Any], aud: str | list[str],
                 algs: tuple[str, ...] = ALGS) -> None:
        self.issuer = str(config["issuer"])
        self.jwks_uri = str(config["jwks_uri"])
        self.aud = aud
        self.algs = algs
        self.seen_algs: list[str] = []  # the alg of each SET accepted, in order
        self._keys: dict[str, jwt.PyJWK] = {}
        self._jwks: dict[str, dict[str, Any]] = {}
        self._seen: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def _key(self, kid: str) -> jwt.PyJWK:
        if kid not in self._keys:  # a new kid: fetch the JWKS again (key rotation)
            for jwk in httpx.get(self.jwks_uri, timeout=10).json()["keys"]:
                self._keys[jwk["kid"]] = jwt.PyJWK(jwk)
                self._jwks[jwk["kid"]] = jwk
        if kid not in self._keys:
            raise ValueError(f"no key {kid!r} in the transmitter's JWKS")
        return self._keys[kid]

    def check(self, token: str) -> tuple[dict[str, Any], bool]:
        """The SET's claims, and whether it is a retransmission; ValueError if invalid."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise ValueError(f"not a JWS: {exc}") from exc
        if header.get("typ") != SET_TYP:
            raise ValueError(f"typ must be {SET_TYP} (RFC 8417 §2.3)")
        alg = header.get("alg")
        if alg not in self.algs:
            raise ValueError(f"alg {alg!r} is not accepted (accepted: {self.algs})")
        key = self._key(str(header.get("kid")))
        jwk = self._jwks[str(header.get("kid"))]
        if jwk.get("kty") != KEY_TYPES[alg] or jwk.get("alg", alg) != alg:
            raise ValueError(f"key {header.get('kid')!r} is not a {alg} key")
        try:
            claims = jwt.decode(token, key, algorithms=[header["alg"]],
                                audience=self.aud, issuer=self.issuer,
                                options={"require": ["iss", "aud", "iat", "jti"]})
        except jwt.PyJWTError as exc:
            raise ValueError(f"invalid SET: {exc}") from exc
        if not isinstance(claims["iat"], int | float) or claims["iat"] > time.time() + 30:
            raise ValueError("iat must be a time not in the future")
        if "sub" in claims or "exp" in claims:
            raise ValueError("a SET carries no top-level sub or exp (SSF 1.0 §4.1)")
        events = claims.get("events")
        if not isinstance(events, dict) or len(events) != 1:
            raise ValueError("a SET carries exactly one event")
        check_subject(claims.get("sub_id"))
        with self._lock:
            before = self._seen.get(claims["jti"])
            if before is not None:
                if before != claims:
                    raise ValueError(f"jti {claims['jti']} reused by a different SET")
                return claims, True
            self._seen[claims["jti"]] = claims
            self.seen_algs.append(alg)
        return claims, False


class SpecReceiver:
    """An RFC 8935 push endpoint on loopback recording, in arrival order, the SETs it took."""

    def __init__(self) -> None:
        self.checker: SetChecker | None = None
        self.received: list[dict[str, Any]] = []  # accepted SETs' claims, in arrival order
        self.duplicates = 0
        self.errors: list[str] = []
        self.attempts = 0  # requests while up, including refused ones
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, answer = receiver.take(self.headers.get("Content-Type", ""),
                                               body.decode("utf-8", "replace"))
                data = json.dumps(answer).encode() if answer else b""
                self.send_response(status)
                if data:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def take(self, content_type: str, token: str) -> tuple[int, dict[str, str] | None]:
        with self._lock:
            self.attempts += 1
            if content_type.split(";")[0].strip() != "application/secevent+jwt":
                self.errors.append(f"content type {content_type!r}")
                return 400, {"err": "invalid_request",
                             "description": "Content-Type must be application/secevent+jwt"}
            assert self.checker is not None, "subscribe before receiving"
            try:
                claims, again = self.checker.check(token.strip())
            except ValueError as exc:
                self.errors.append(str(exc))
                return 400, {"err": "invalid_request", "description": str(exc)}
            if again:
                self.duplicates += 1
            else:
                self.received.append(claims)
            return 202, None


def poll(endpoint: str, token: str, checker: SetChecker, *, ack: list[str], max_events: int = 10,
         return_immediately: bool | None = True, set_errs: Mapping[str, Any] | None = None
         ) -> tuple[list[dict[str, Any]], bool]:
    """One RFC 8936 §2.4 poll: acknowledge `ack`, report `set_errs`; the new SETs (validated)
    in the answer's order, and `moreAvailable`. `return_immediately` None leaves it out (the
    RFC's default: false, a long poll)."""
    request: dict[str, Any] = {"ack": ack, "maxEvents": max_events}
    if return_immediately is not None:
        request["returnImmediately"] = return_immediately
    if set_errs:
        request["setErrs"] = dict(set_errs)
    response = httpx.post(endpoint, json=request, headers=auth_headers(token), timeout=60)
    assert response.status_code == 200, response.text
    data = response.json()
    out = []
    for jti, set_token in data["sets"].items():
        claims, _ = checker.check(set_token)
        assert claims["jti"] == jti  # RFC 8936 §2.4: the key is the SET's jti
        out.append(claims)
    return out, bool(data.get("moreAvailable", False))


def inversions(order: list[Any]) -> int:
    """Pairs received in the opposite order to the one they were issued in (`order` lists
    the issue positions in arrival order)."""
    return sum(1 for i in range(len(order)) for j in range(i + 1, len(order))
               if order[i] > order[j])


def main() -> None:
    """`python -m tests.spec_receiver TRANSMITTER IDP_ISSUER CLIENT_ID [--alg RS256]
    [--events URI ...]`: an outside receiver in its own process (see the module docstring)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("transmitter")
    parser.add_argument("idp_issuer")
    parser.add_argument("client_id")
    parser.add_argument("--alg", choices=ALGS, default=None)
    parser.add_argument("--events", nargs="*", default=[
        "https://schemas.openid.net/secevent/caep/event-type/session-revoked",
        "https://schemas.openid.net/secevent/ssf/event-type/verification"])
    args = parser.parse_args()
    secret = sys.stdin.readline().strip()
    config = discover(args.transmitter)
    assert {"spec_urn": "urn:ietf:rfc:6749"} in config.get("authorization_schemes", [])
    token = client_credentials_token(args.idp_issuer, args.client_id, secret,
                                     resource=config["issuer"])
    receiver = SpecReceiver()
    aud = f"urn:spec-receiver:{receiver.port}"
    stream = subscribe(config, token, {"method": "urn:ietf:rfc:8935",
                                       "endpoint_url": receiver.url}, args.events, aud=aud,
                       alg=args.alg)
    receiver.checker = SetChecker(config, aud, algs=(args.alg,) if args.alg else ALGS)
    print(json.dumps({"stream": stream}), flush=True)
    verify = httpx.post(config["verification_endpoint"], headers=auth_headers(token),
                        json={"stream_id": stream["stream_id"], "state": "spec-receiver"},
                        timeout=10)
    assert verify.status_code == 204, verify.text
    printed = 0

    def report() -> None:
        nonlocal printed
        while True:
            with receiver._lock:
                new = receiver.received[printed:]
                algs = receiver.checker.seen_algs[printed:] if receiver.checker else []
                errors = list(receiver.errors)
            for claims, alg in zip(new, algs, strict=False):
                print(json.dumps({"set": claims, "alg": alg}), flush=True)
            printed += len(new)
            if errors:
                print(json.dumps({"errors": errors}), flush=True)
                receiver.errors.clear()
            time.sleep(0.02)

    threading.Thread(target=report, daemon=True).start()
    sys.stdin.read()  # until the parent closes our stdin
    receiver.stop()


if __name__ == "__main__":
    main()

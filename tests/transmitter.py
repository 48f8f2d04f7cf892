"""A stand-in SSF transmitter for receiver tests: a key of its own, its JWKS on a loopback HTTP
server, and SETs signed with it (or deliberately wrong)."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"


def serve_jwks(body: Callable[[], bytes]) -> tuple[ThreadingHTTPServer, str]:
    """A loopback JWKS endpoint answering `body()` to every GET; returns it and its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            payload = body()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/jwks"


class TestTransmitter:
    __test__ = False  # not a test class

    def __init__(self, issuer: str = "https://antenna.test") -> None:
        self.issuer = issuer
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.kid = secrets.token_urlsafe(8)
        jwk = json.loads(ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "alg": "ES256", "use": "sig"})
        body = json.dumps({"keys": [jwk]}).encode()
        self.server, self.jwks_uri = serve_jwks(lambda: body)

    def set(self, audience: str, subject: dict[str, Any], *, event: str = SESSION_REVOKED,
            key: Any = None, kid: str | None = None, typ: str = "secevent+jwt",
            issuer: str | None = None, jti: str | None = None,
            events: dict[str, Any] | None = None) -> str:
        claims = {"iss": issuer or self.issuer, "aud": audience, "iat": int(time.time()),
                  "jti": jti or secrets.token_urlsafe(12), "sub_id": subject,
                  "events": events if events is not None else {
                      event: {"event_timestamp": int(time.time()),
                              "reason_admin": {"en": "anomaly: repeated tier-4 attempts"}}}}
        return jwt.encode(claims, key or self.key, algorithm="ES256",
                          headers={"typ": typ, "kid": kid or self.kid})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

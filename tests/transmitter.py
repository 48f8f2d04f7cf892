"""A stand-in SSF transmitter for receiver tests: a key of its own, its JWKS on a loopback HTTP
server, and SETs signed with it (or deliberately wrong)."""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"


class TestTransmitter:
    __test__ = False  # not a test class

    def __init__(self, issuer: str = "https://antenna.test") -> None:
        self.issuer = issuer
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.kid = secrets.token_urlsafe(8)
        jwk = json.loads(ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "alg": "ES256", "use": "sig"})
        body = json.dumps({"keys": [jwk]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.jwks_uri = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

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

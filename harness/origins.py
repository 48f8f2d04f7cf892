"""The origin of the pages a person sees (WebAuthn refuses IP addresses: passkeys are signed for
RP ID `localhost`). A module of its own, so a notebook's lab client names the Verify app's origin
without loading the simulated Verify (tests/test_fast_start.py)."""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["RP_ID", "user_facing_url"]

RP_ID = "localhost"


def user_facing_url(base_url: str) -> str:
    """`http://localhost:PORT` for a Verify at http://127.0.0.1:PORT (or any loopback name):
    the origin of the pages a person sees, the only one a passkey is signed for."""
    parts = urlsplit(base_url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme or 'http'}://{RP_ID}{port}"

"""The SPIFFE trust bundle as the tenant sees it: the trust domain's JWT-SVID keys, fetched from
its OIDC discovery provider (`<provider>/keys`) like any relying party that is not a workload."""

from __future__ import annotations

from typing import Any

from iia.jwks import JwksCache

__all__ = ["SpiffeBundleSource"]


class SpiffeBundleSource:
    def __init__(self, trust_domain: str, keys_url: str) -> None:
        self.trust_domain = trust_domain
        self.jwks = JwksCache(keys_url, what="SPIFFE trust bundle", dependency="spire")

    def bundles(self, kid: str | None = None) -> dict[str, dict[str, Any]]:
        """trust domain -> {kid: key}, refetched (rate-limited) when `kid` is unknown. Raises
        iia.jwks.JwksUnavailableError when the bundle cannot be fetched."""
        return {self.trust_domain: self.jwks.keys(kid)}

"""A simulated SPIRE agent: the SPIFFE Workload API on a unix socket, the unix workload attestor,
a rotating JWT signing authority, and an OIDC discovery provider for relying parties like Vault."""

from __future__ import annotations

from harness.spire.attestor import PeerCredentials, RegistrationEntry, Registry, load_registry
from harness.spire.authority import JwtAuthority
from harness.spire.oidc_discovery import discovery_app
from harness.spire.workload_api import WorkloadApiServer

__all__ = [
    "JwtAuthority",
    "PeerCredentials",
    "RegistrationEntry",
    "Registry",
    "WorkloadApiServer",
    "discovery_app",
    "load_registry",
]

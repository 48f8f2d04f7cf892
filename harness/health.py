"""Health probes for the lab's services, by the protocol each one speaks.

One table (`PROBES`) says how each endpoint kind is probed over HTTP; `iia-lab status`, the
notebooks and the docker-compose health checks (checked by the tests) all follow it. A `unix://`
endpoint is a SPIFFE Workload API socket and is asked for its JWT bundles.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

__all__ = ["PROBES", "HttpProbe", "ServiceHealth", "http_probe", "probe_all", "probe_service"]


@dataclass(frozen=True)
class HttpProbe:
    """GET `path` on the endpoint's origin: a status in `healthy` is up; one in `known` is down
    with that explanation; anything else is down as `HTTP <status>`."""

    path: str
    healthy: Mapping[int, str] = field(default_factory=lambda: {200: "ok"})
    known: Mapping[int, str] = field(default_factory=dict)


PROBES: dict[str, HttpProbe] = {
    # Vault's own health endpoint (also answers for OpenBao)
    "vault": HttpProbe("/v1/sys/health", {200: "ok", 429: "ok (standby)"},
                       {501: "not initialized", 503: "sealed"}),
    # what Vault itself fetches: SPIRE's OIDC discovery provider serves nothing else
    "spiffe_oidc": HttpProbe("/.well-known/openid-configuration"),
    # JupyterLab's version endpoint, the one it answers without a token
    "jupyter": HttpProbe("/api"),
}
DEFAULT_PROBE = HttpProbe("/healthz")  # the lab's and iia's own services


def http_probe(service: str) -> HttpProbe:
    return PROBES.get(service, DEFAULT_PROBE)


@dataclass(frozen=True)
class ServiceHealth:
    service: str
    endpoint: str
    healthy: bool
    detail: str


def _probe_workload_api(endpoint: str, timeout: float) -> tuple[bool, str]:
    # Imported here: grpc is heavy and only this probe needs it.
    from spiffe import WorkloadApiClient
    from spiffe.errors import PySpiffeError

    try:
        with WorkloadApiClient(endpoint, default_timeout=timeout) as client:
            bundles = client.fetch_jwt_bundles()
    except PySpiffeError as exc:
        text = str(exc)
        if "PERMISSION_DENIED" in text:
            return True, "up (this caller is not a registered workload)"
        return False, text
    count = sum(len(b.jwt_authorities) for b in bundles.bundles)
    return True, f"ok ({count} JWT signing key{'s' if count != 1 else ''})"


def probe_service(service: str, endpoint: str, timeout: float = 2.0) -> ServiceHealth:
    if endpoint.startswith("unix://"):
        ok, detail = _probe_workload_api(endpoint, timeout)
        return ServiceHealth(service, endpoint, ok, detail)
    probe = http_probe(service)
    origin = "/".join(endpoint.split("/", 3)[:3])  # scheme://host:port
    try:
        response = httpx.get(origin + probe.path, timeout=timeout)
    except httpx.HTTPError as exc:
        return ServiceHealth(service, endpoint, False, f"unreachable: {exc.__class__.__name__}")
    status = response.status_code
    if status in probe.healthy:
        return ServiceHealth(service, endpoint, True, probe.healthy[status])
    return ServiceHealth(service, endpoint, False, probe.known.get(status, f"HTTP {status}"))


def probe_all(endpoints: Mapping[str, str], timeout: float = 2.0) -> list[ServiceHealth]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(endpoints))) as pool:
        futures = [pool.submit(probe_service, s, e, timeout) for s, e in endpoints.items()]
        return [f.result() for f in futures]

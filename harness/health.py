"""Health probes for the lab's services, by the protocol each one speaks."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

__all__ = ["ServiceHealth", "probe_all", "probe_service"]

# Path probed on each HTTP service; others answer `/healthz`.
_HTTP_PROBES = {"vault": "/v1/sys/health"}


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
    origin = "/".join(endpoint.split("/", 3)[:3])  # scheme://host:port
    url = origin + _HTTP_PROBES.get(service, "/healthz")
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        return ServiceHealth(service, endpoint, False, f"unreachable: {exc.__class__.__name__}")
    if response.status_code == 200:
        return ServiceHealth(service, endpoint, True, "ok")
    detail = f"HTTP {response.status_code}"
    if service == "vault" and response.status_code == 503:
        detail = "sealed"
    return ServiceHealth(service, endpoint, False, detail)


def probe_all(endpoints: Mapping[str, str], timeout: float = 2.0) -> list[ServiceHealth]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(endpoints))) as pool:
        futures = [pool.submit(probe_service, s, e, timeout) for s, e in endpoints.items()]
        return [f.result() for f in futures]

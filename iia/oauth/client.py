"""The MCP server's client of the authorization server: discovery, the token endpoint
(RFC 6749 §3.2), introspection (RFC 7662), the CIBA backchannel authentication endpoint and
the withdrawal of a push whose call was cancelled (`backchannel_withdrawal_endpoint`).

Requests authenticate with `client_secret_basic` (RFC 6749 §2.3.1) using a credential read from
Vault; error bodies become typed `OAuthError`s (§5.2); an unreachable or failing server is
`IdpUnavailableError`, naming the identity provider.

A busy server (HTTP 503 `temporarily_unavailable` with `Retry-After`, RFC 9110 §10.2.3: it
did nothing and says when to come back) is asked again after the time it names, within a
budget: at most `BUSY_RETRIES` more requests and `BUSY_BUDGET` seconds of waiting per
request (a `Retry-After` longer than what is left of the budget is not waited for). When the
budget is spent the answer is `IdpBusyError`: the identity provider is busy, not unreachable,
and nothing was issued. A 503 without `Retry-After`, or any other 5xx, is not retried here (it
may have done something); callers that know their request is safe to repeat (a CIBA poll)
retry on their own terms.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from iia.errors import DependencyError
from iia.identity.vault import ClientCredential
from iia.net import http_client
from iia.oauth.errors import error_from_response

__all__ = ["BUSY_BUDGET", "BUSY_RETRIES", "AuthorizationServerClient", "IdpBusyError",
           "IdpUnavailableError", "discover", "retry_after"]

BUSY_RETRIES = 3  # more requests after a busy answer, at most
BUSY_BUDGET = 5.0  # seconds of Retry-After waited per request, at most


class IdpUnavailableError(DependencyError, code="idp_unavailable", dependency="idp"):
    """The identity provider does not answer, or answers 5xx or nonsense."""


class IdpBusyError(IdpUnavailableError, code="idp_busy"):
    """The identity provider is up but busy: it answered 503 `temporarily_unavailable` with
    `Retry-After` (and kept answering so within the retry budget). Nothing was issued.
    `retry_after` is the wait it last asked for, in seconds."""

    retry_after: float | None = None


def discover(issuer: str, *, http: httpx.Client | None = None,
             timeout: float = 5.0) -> dict[str, Any]:
    """Fetch the OpenID Provider metadata of `issuer` (OpenID Connect Discovery 1.0 §4)."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    client = http or http_client(timeout)
    try:
        response = client.get(url)
    except httpx.HTTPError as exc:
        raise IdpUnavailableError(f"the identity provider at {issuer} is unreachable "
                                  f"({exc.__class__.__name__})") from exc
    finally:
        if http is None:
            client.close()
    if response.status_code != 200:
        raise IdpUnavailableError(f"OIDC discovery at {url} answered HTTP {response.status_code}",
                                  upstream_code=str(response.status_code))
    metadata: dict[str, Any] = response.json()
    if metadata.get("issuer") != issuer.rstrip("/"):
        raise IdpUnavailableError(f"OIDC discovery at {url} names issuer "
                                  f"{metadata.get('issuer')!r}, not {issuer!r}")
    return metadata


def basic_auth(credential: ClientCredential) -> str:
    pair = f"{quote(credential.client_id, safe='')}:{quote(credential.client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


class AuthorizationServerClient:
    """Endpoints come from discovery, fetched once and kept. One pooled keep-alive client
    (`iia.net.http_client`) serves every request to the authorization server."""

    def __init__(self, issuer: str, *, http: httpx.Client | None = None,
                 timeout: float = 5.0, busy_retries: int = BUSY_RETRIES,
                 busy_budget: float = BUSY_BUDGET,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.issuer = issuer.rstrip("/")
        self._http = http or http_client(timeout)
        self.busy_retries = busy_retries
        self.busy_budget = busy_budget
        self._sleep = sleep
        self._metadata: dict[str, Any] | None = None
        self._lock = threading.Lock()
        # -- instrumentation (iia.ops counters): requests sent, by endpoint and by grant --
        self._count_lock = threading.Lock()
        self.requests: dict[str, int] = {}  # endpoint metadata name -> requests sent
        self.grants: dict[str, int] = {}  # token endpoint: grant_type -> requests sent
        self.busy_answers = 0  # 503 temporarily_unavailable + Retry-After answers received

    @property
    def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            with self._lock:
                if self._metadata is None:
                    self._metadata = discover(self.issuer, http=self._http)
        return self._metadata

    def endpoint(self, name: str) -> str:
        url = self.metadata.get(name)
        if not isinstance(url, str):
            raise IdpUnavailableError(f"the identity provider does not advertise {name}")
        return url

    def _post(self, endpoint: str, form: Mapping[str, str],
              credential: ClientCredential) -> dict[str, Any]:
        """One request, asked again while the server is busy and the budget lasts."""
        url = self.endpoint(endpoint)
        waited = 0.0
        retries = 0
        while True:
            response, body = self._send(endpoint, url, form, credential)
            if response.status_code == 200 and isinstance(body, dict):
                return body
            if response.status_code < 500:
                raise error_from_response(response.status_code, body)
            delay = _busy(response, body)
            if delay is None:
                raise IdpUnavailableError(_unavailable(endpoint, response, body),
                                          upstream_code=str(response.status_code))
            with self._count_lock:
                self.busy_answers += 1
            if retries >= self.busy_retries or waited + delay > self.busy_budget:
                said = (_unavailable(endpoint, response, body) + _retried(retries, waited)
                        + "; nothing was issued")
                if isinstance(body, dict) and body.get("dependency") == "vault":
                    raise IdpUnavailableError(said, upstream_code=str(response.status_code))
                busy = IdpBusyError(said, upstream_code=str(response.status_code))
                busy.retry_after = delay
                raise busy
            self._sleep(delay)
            waited += delay
            retries += 1

    def _send(self, endpoint: str, url: str, form: Mapping[str, str],
              credential: ClientCredential) -> tuple[httpx.Response, object]:
        with self._count_lock:
            self.requests[endpoint] = self.requests.get(endpoint, 0) + 1
            if endpoint == "token_endpoint":
                grant = form.get("grant_type", "")
                self.grants[grant] = self.grants.get(grant, 0) + 1
        try:
            response = self._http.post(url, data=dict(form),
                                       headers={"Authorization": basic_auth(credential),
                                                "Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise IdpUnavailableError(f"{endpoint} {url} is unreachable "
                                      f"({exc.__class__.__name__})") from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        return response, body

    def token(self, form: Mapping[str, str], credential: ClientCredential) -> dict[str, Any]:
        """A token request (any grant); the token response or the typed OAuth error."""
        return self._post("token_endpoint", form, credential)

    def introspect(self, token: str, credential: ClientCredential) -> dict[str, Any]:
        """RFC 7662: is `token` active, and what does it say."""
        return self._post("introspection_endpoint", {"token": token}, credential)

    def backchannel_authorize(self, form: Mapping[str, str],
                              credential: ClientCredential) -> dict[str, Any]:
        """OpenID CIBA §7: start a push approval; returns auth_req_id, expires_in, interval."""
        return self._post("backchannel_authentication_endpoint", form, credential)

    def withdraw_backchannel(self, auth_req_id: str,
                             credential: ClientCredential) -> dict[str, Any]:
        """Withdraw a CIBA request nobody needs an answer to any more (its call was
        cancelled): the IdP takes the push off the phone and will issue nothing for it.
        Returns `{"status": ...}`: "withdrawn", or what the request already was. An IdP that
        advertises no `backchannel_withdrawal_endpoint` is `IdpUnavailableError` (CIBA Core
        defines no withdrawal; the lab's tenant offers one)."""
        return self._post("backchannel_withdrawal_endpoint", {"auth_req_id": auth_req_id},
                          credential)

    def close(self) -> None:
        self._http.close()


def _unavailable(endpoint: str, response: httpx.Response, body: object) -> str:
    """The sentence for a 5xx from the IdP, naming the real cause when the IdP said it: RFC
    6749's `temporarily_unavailable` from its own secret store (Vault) or from being busy."""
    said = f"{endpoint} answered HTTP {response.status_code}"
    if not isinstance(body, dict) or body.get("error") != "temporarily_unavailable":
        return said
    said += " temporarily_unavailable"
    if body.get("dependency") == "vault":
        return f"the identity provider's secret store (Vault) is unavailable ({said})"
    retry = response.headers.get("Retry-After")
    return f"the identity provider is busy ({said}" + (
        f", retry after {retry} s)" if retry else ")")


def retry_after(response: httpx.Response) -> float | None:
    """RFC 9110 §10.2.3 `Retry-After`: delay-seconds or an HTTP-date, as seconds from now
    (never negative); None when absent or malformed."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _busy(response: httpx.Response, body: object) -> float | None:
    """The seconds a busy server asked us to wait: a 503 `temporarily_unavailable` (RFC 6749
    §5.2's code for "cannot handle the request now") with a Retry-After; else None."""
    if response.status_code != 503 or not isinstance(body, dict) \
            or body.get("error") != "temporarily_unavailable":
        return None
    return retry_after(response)


def _retried(retries: int, waited: float) -> str:
    if not retries:
        return ""
    return f"; still so after {retries} {'retry' if retries == 1 else 'retries'} " \
           f"in {waited:g} s"

"""Antenna's HTTP surface (SSF 1.0 §7, §8; RFC 8936 for poll).

    GET  /.well-known/ssf-configuration   transmitter metadata
    GET  /jwks                            the SET signing key
    GET|POST|PATCH|PUT|DELETE /ssf/streams   stream configuration (bearer token)
    GET|POST /ssf/status                  stream status: enabled | paused | disabled
    POST /ssf/verify                      send a verification event
    POST /ssf/poll/{stream_id}            poll delivery (RFC 8936): ack, setErrs, maxEvents (a
                                          whole number >= 0), returnImmediately (default false:
                                          wait for a SET, at most `Antenna.poll_wait` seconds)

Management needs `Authorization: Bearer` (401 invalid_token otherwise; 503 naming the IdP when
its keys cannot be fetched); every malformed request is 400 invalid_request with the reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from iia.antenna.management import MANAGE_SCOPE, ManagementUnavailable
from iia.antenna.sets import ALGORITHMS
from iia.antenna.transmitter import POLL, PUSH, Antenna, StreamError

__all__ = ["antenna_app"]


def _error(status: int, description: str) -> JSONResponse:
    code = {401: "invalid_token", 403: "forbidden", 404: "not_found"}.get(status,
                                                                           "invalid_request")
    headers = {"WWW-Authenticate": 'Bearer realm="antenna"'} if status == 401 else None
    return JSONResponse({"error": code, "error_description": description}, status_code=status,
                        headers=headers)


MAX_ACK = 1000  # jtis acknowledged in one poll
MAX_EVENTS = 100  # SETs handed out by one poll, whatever maxEvents asks
DEFAULT_MAX_EVENTS = 10


def set_errors(raw: Any) -> dict[str, str]:
    """RFC 8936 §2.4 `setErrs`: {jti: {"err": code, "description": text}} -> {jti: "err: text"}.
    Anything else is a 400 with the reason."""
    if not isinstance(raw, dict) or len(raw) > MAX_ACK:
        raise StreamError(f"setErrs must be an object of at most {MAX_ACK} jti -> "
                          '{"err", "description"} (RFC 8936 §2.4)')
    out = {}
    for jti, error in raw.items():
        if not isinstance(error, dict) or not isinstance(error.get("err"), str) or \
                not isinstance(error.get("description", ""), str):
            raise StreamError(f"setErrs[{jti!r}] must be an object with err (a string) and "
                              "description (RFC 8936 §2.4, RFC 8935 §2.4)")
        out[jti] = f"{error['err']}: {error.get('description', '')}"
    return out


def antenna_app(antenna: Antenna) -> Starlette:
    def owner(request: Request) -> str | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return antenna.client(token.strip()) if scheme.lower() == "bearer" else None

    async def body(request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except ValueError as exc:
            raise StreamError("the body is not JSON") from exc
        if not isinstance(data, dict):
            raise StreamError("the body must be a JSON object")
        return data

    def guarded(handler: Callable[[Request, str], Awaitable[Response]]
                ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                client = await run_in_threadpool(owner, request)
            except ManagementUnavailable as exc:  # fail closed, naming the IdP
                return JSONResponse(exc.to_dict(), status_code=exc.status)
            if client is None:
                return _error(401, "a management bearer token is required: an access token "
                              "the IdP issued to a registered receiver client (client "
                              f"credentials, scope {MANAGE_SCOPE}, resource {antenna.issuer})")
            try:
                return await handler(request, client)
            except StreamError as exc:
                return _error(exc.status, exc.description)

        return endpoint

    async def configuration(request: Request) -> JSONResponse:
        i = antenna.issuer
        return JSONResponse({
            "spec_version": "1_0", "issuer": i, "jwks_uri": f"{i}/jwks",
            "delivery_methods_supported": [PUSH, POLL],
            "configuration_endpoint": f"{i}/ssf/streams", "status_endpoint": f"{i}/ssf/status",
            "verification_endpoint": f"{i}/ssf/verify",
            # the CAEP Interoperability Profile's: OAuth 2.0 (RFC 6749) access tokens
            "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6749"}],
            "set_signing_alg_values_supported": list(ALGORITHMS),
            "default_subjects": "ALL"})

    async def jwks(request: Request) -> JSONResponse:
        return JSONResponse(antenna.signer.jwks())

    async def streams(request: Request, client: str) -> Response:
        method = request.method
        if method == "GET":
            return JSONResponse(antenna.get_streams(client,
                                                    request.query_params.get("stream_id")))
        if method == "POST":
            return JSONResponse(antenna.create_stream(client, await body(request)),
                                status_code=201)
        if method in ("PATCH", "PUT"):
            return JSONResponse(antenna.update_stream(client, await body(request),
                                                      replace=method == "PUT"))
        antenna.delete_stream(client, request.query_params.get("stream_id", ""))
        return Response(status_code=204)

    async def status(request: Request, client: str) -> Response:
        if request.method == "GET":
            return JSONResponse(antenna.status(client, request.query_params.get("stream_id",
                                                                                "")))
        data = await body(request)
        return JSONResponse(antenna.set_status(client, str(data.get("stream_id", "")),
                                               str(data.get("status", "")), data.get("reason")))

    async def verify(request: Request, client: str) -> Response:
        data = await body(request)
        antenna.verify(client, str(data.get("stream_id", "")), data.get("state"))
        return Response(status_code=204)

    async def poll(request: Request, client: str) -> Response:
        data = await body(request)
        ack = data.get("ack", [])
        if not isinstance(ack, list) or not all(isinstance(a, str) for a in ack) or \
                len(ack) > MAX_ACK:
            raise StreamError(f"ack must be a list of at most {MAX_ACK} jti strings "
                              "(RFC 8936 §2.4)")
        max_events = data.get("maxEvents", DEFAULT_MAX_EVENTS)
        if not isinstance(max_events, int) or isinstance(max_events, bool) or max_events < 0:
            raise StreamError("maxEvents must be a whole number of SETs, 0 or more "
                              "(RFC 8936 §2.4)")
        immediately = data.get("returnImmediately", False)  # RFC 8936 §2.4: default false
        if not isinstance(immediately, bool):
            raise StreamError("returnImmediately must be true or false (RFC 8936 §2.4)")
        errors = set_errors(data.get("setErrs", {}))
        result = await run_in_threadpool(
            antenna.poll, client, request.path_params["stream_id"],
            max_events=min(max_events, MAX_EVENTS), ack=ack,
            return_immediately=immediately, set_errors=errors)
        return JSONResponse(result)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[
        Route("/.well-known/ssf-configuration", configuration),
        Route("/jwks", jwks),
        Route("/ssf/streams", guarded(streams), methods=["GET", "POST", "PATCH", "PUT", "DELETE"]),
        Route("/ssf/status", guarded(status), methods=["GET", "POST"]),
        Route("/ssf/verify", guarded(verify), methods=["POST"]),
        Route("/ssf/poll/{stream_id}", guarded(poll), methods=["POST"]),
        Route("/healthz", health),
    ])

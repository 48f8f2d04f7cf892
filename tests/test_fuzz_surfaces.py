"""Bad input at every HTTP surface of the lab: a readable 4xx, never a 5xx or a dropped connection,
and nothing changes.

A seeded, bounded fuzz (`IIA_FUZZ_SEED`, `IIA_FUZZ_REQUESTS` per surface): random methods on every
route each service declares, mangled paths (control characters, trailing white space, long,
traversal, unicode), random headers and content types, bodies of the wrong shape. No credentials
are sent, so nothing may change: the directory, group memberships, IdP sessions, pushes and
approvals, Antenna's streams, the CAEP receiver's store and the MCP server's revocations are
compared before and after, and every service is healthy afterwards. OpenBao is not ours and is
left out.
"""

from __future__ import annotations

import json
import os
import random
import socket
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from harness.health import probe_all
from harness.lab import Lab
from tests.helpers import user_token

SEED = int(os.environ.get("IIA_FUZZ_SEED", "20261201"))
PER_SURFACE = int(os.environ.get("IIA_FUZZ_REQUESTS", "120"))

# every route each service declares (path templates filled with junk ids below)
ROUTES: dict[str, list[str]] = {
    "verify": [
        "/oidc/endpoint/default/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server/oidc/endpoint/default",
        "/oidc/endpoint/default/jwks", "/oidc/endpoint/default/authorize",
        "/oidc/endpoint/default/token", "/oidc/endpoint/default/introspect",
        "/oidc/endpoint/default/revoke", "/oidc/endpoint/default/logout",
        "/oidc/endpoint/default/bc-authorize", "/v1.0/ssf/events", "/lab/phone",
        "/lab/phone/requests", "/lab/phone/requests/{id}/approve",
        "/lab/phone/requests/{id}/deny", "/lab/decisions", "/healthz",
        "/v2.0/Users", "/v2.0/Users/{id}", "/v2.0/Groups", "/v2.0/Groups/{id}",
        "/v2.0/Users/{id}/sessions", "/v2.0/applications", "/v2.0/applications/{id}",
        "/v2.0/accesspolicies", "/v2.0/accesspolicies/{id}", "/v2.0/.search",
        "/v2.0/ServiceProviderConfig", "/v2.0/ResourceTypes", "/v2.0/Schemas", "/v2.0/Bulk",
    ],
    "mcp": ["/mcp", "/ssf/events", "/ciba/notification", "/healthz",
            "/.well-known/oauth-protected-resource",
            "/.well-known/oauth-protected-resource/mcp"],
    "chat": ["/", "/auth/login", "/auth/callback", "/auth/logout", "/me", "/chat", "/events",
             "/healthz"],
    "antenna": ["/.well-known/ssf-configuration", "/jwks", "/ssf/streams", "/ssf/status",
                "/ssf/verify", "/ssf/poll/{id}", "/healthz"],
    "console": ["/events", "/calls", "/healthz", "/"],
    "caep_receiver": ["/events", "/received", "/healthz"],
    "model": ["/v1/messages", "/healthz"],
    "spiffe_oidc": ["/.well-known/openid-configuration", "/keys", "/healthz"],
}
LAB_RECEIVERS = ("verify", "mcp", "caep_receiver")
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
CONTENT_TYPES = ["application/json", "application/x-www-form-urlencoded", "text/plain",
                 "application/scim+json", "application/secevent+jwt", "multipart/form-data",
                 "application/json; charset=latin-1", "", "*/*", "application/jwt"]
PATH_JUNK = ["?after=abc", "?limit=abc&after=-5", "?session=1&limit=1.5",
             "%00", "%0a", "%0d%0a", "%20", "%09", "%7f", "/..%2f..%2fetc%2fpasswd", "/%ff%fe",
             "/\u00e9\u00e8", "/" + "a" * 3000, "//", "/.", "?x=%00", "?limit=abc",
             "?count=-1", "?startIndex=x", "?after=abc", "?scope=all&limit=1e9", ";x=1",
             "?filter=userName%20eq", "?filter=%22", "?session=%00"]


def _bodies(rng: random.Random) -> list[bytes]:
    scalars: list[Any] = [None, True, 0, -1, 1e308, "ten", "", "x" * 5000, [], {}, [1, "a"]]
    keys = ["maxEvents", "returnImmediately", "ack", "setErrs", "delivery", "events_requested",
            "aud", "message", "messages", "model", "max_tokens", "stream", "jsonrpc", "method",
            "params", "id", "grant_type", "schemas", "Operations", "userName", "members",
            "stream_id", "status", "subject", "authorization_details"]
    shaped = {k: rng.choice(scalars) for k in rng.sample(keys, 4)}
    return [b"", b"{", b"null", b"[]", b'"a string"', b"12", b"\xff\xfe\x00", b"a=b&c",
            b"grant_type=password&username=alice", json.dumps(shaped).encode(),
            json.dumps([shaped]).encode(), b"eyJhbGciOiJub25lIn0.e30.", b"x" * 70000,
            json.dumps({"model": "m", "max_tokens": rng.choice(scalars),
                        "messages": rng.choice(scalars)}).encode(),
            json.dumps({"model": "m", "max_tokens": 5, "messages": [rng.choice(scalars)]}).encode(),
            json.dumps({"jsonrpc": "2.0", "id": rng.choice(scalars), "method": "tools/call",
                        "params": rng.choice(scalars)}).encode(),
            json.dumps({"delivery": rng.choice(scalars), "aud": rng.choice(scalars)}).encode()]


def _request(rng: random.Random, base: str, routes: list[str], credential: dict[str, str]
             ) -> tuple[str, str, dict[str, str], bytes]:
    path = rng.choice(routes).replace("{id}", rng.choice(["x", "0", "%00", "..", "a" * 200,
                                                           "apv_missing", "\u2603"]))
    if rng.random() < 0.5:
        path += rng.choice(PATH_JUNK)
    headers = {"Content-Type": rng.choice(CONTENT_TYPES)}
    if credential and rng.random() < 0.6:  # past authentication, into the parsers
        headers.update(credential)
    elif rng.random() < 0.4:
        headers["Authorization"] = rng.choice(["Bearer", "Bearer x", "Basic !!!", "Bearer " +
                                               "a" * 4000, "Digest x", "bearer e30.e30.e30"])
    if rng.random() < 0.3:
        headers["Accept"] = rng.choice(["text/event-stream", "application/json", "*/*", "x/y"])
    if rng.random() < 0.2:
        headers["Origin"] = rng.choice(["http://evil.example", "null"])
    if rng.random() < 0.2:
        headers["Mcp-Session-Id"] = rng.choice(["x", "", "0" * 300])
    return rng.choice(METHODS), base + path, headers, rng.choice(_bodies(rng))


def _systematic(rng: random.Random, base: str, routes: list[str], credential: dict[str, str]
                ) -> list[tuple[str, str, dict[str, str], bytes]]:
    """Every route with every method, every mangled path and query, and (POST) every body."""
    out = []
    for route in routes:
        path = route.replace("{id}", "x")
        for method in METHODS:
            out.append((method, base + path, {**credential, "Content-Type": rng.choice(
                CONTENT_TYPES)}, rng.choice(_bodies(rng))))
        for junk in PATH_JUNK:
            for method in ("GET", "POST"):
                out.append((method, base + path + junk, dict(credential), b"{}"))
        for body in _bodies(rng):
            for content_type in ("application/json", "application/x-www-form-urlencoded"):
                out.append(("POST", base + path, {**credential, "Content-Type": content_type},
                            body))
    return out


def _send(http: httpx.Client, method: str, url: str, headers: dict[str, str],
          body: bytes) -> str | None:
    """What is wrong with the answer, or None."""
    try:
        with http.stream(method, url, headers=headers, content=body) as response:
            if "text/event-stream" not in response.headers.get("content-type", ""):
                response.read()  # (a stream's status line is its answer)
            status = response.status_code
    except httpx.TransportError as exc:
        return f"{method} {url[:120]} body={len(body)} bytes -> no answer ({exc!r})"
    if status >= 500:
        text = response.text[:200] if response.is_stream_consumed else ""
        return (f"{method} {url[:120]} [{headers.get('Content-Type')}] body={body[:60]!r} -> "
                f"{status} {text!r}")
    return None


def _state(lab: Lab) -> dict[str, Any]:
    directory = lab.verify.directory
    users = directory.users()
    groups = {g.id: sorted(m.value or "" for m in (g.members or []))
              for g in directory._search(directory.group_type, None)}
    sessions = {s.sid: s.alive for u in users if u.id
                for s in lab.verify.sessions.sessions_of(u.id)}
    return {
        "users": [json.dumps(u.model_dump(mode="json"), sort_keys=True, default=str)
                  for u in users],
        "groups": groups,
        "sessions": sessions,
        "pushes": sorted((p.id, p.status) for p in lab.verify.approvals.all()),
        # the lab's own subscriptions, config and status (the fuzz client's API calls may
        # create streams of its own: a valid request, and not the lab's state)
        "streams": sorted(json.dumps(s, sort_keys=True) for owner in LAB_RECEIVERS
                          for s in lab.antenna.store.streams(owner)),
        "caep_received": len(lab.caep.events()),
    }


@pytest.mark.timeout(900)
def test_bad_input_never_gets_a_5xx_a_dropped_connection_or_a_change(lab: Lab) -> None:
    rng = random.Random(SEED)
    # credentials that get a request past authentication on the surfaces where garbage cannot
    # change anything: Antenna's management API (a client of its own), the model (any key), the
    # MCP server (alice's user token; no garbage body is a well-formed tools/call)
    credentials = {
        "antenna": {"Authorization": f"Bearer {lab.antenna.register_client('fuzz')}"},
        "model": {"x-api-key": "lab"},
        "mcp": {"Authorization": f"Bearer {user_token(lab)['access_token']}",
                "Accept": "application/json, text/event-stream"},
    }
    before = _state(lab)
    problems: list[str] = []
    sent = 0
    with httpx.Client(timeout=30, follow_redirects=False) as http:
        for service, routes in ROUTES.items():
            base = lab.endpoints[service].removesuffix("/mcp").rstrip("/")
            credential = credentials.get(service, {})
            for method, url, headers, body in [*_systematic(rng, base, routes, credential),
                                               *(_request(rng, base, routes, credential)
                                                 for _ in range(PER_SURFACE))]:
                sent += 1
                problem = _send(http, method, url, headers, body)
                if problem:
                    problems.append(problem)
    for stream_id, _, _ in lab.antenna.store.streams("fuzz"):
        lab.antenna.store.delete_stream(stream_id)
    problems += _raw_requests(lab)
    assert sent > PER_SURFACE * len(ROUTES)
    assert problems == [], f"{len(problems)} of {sent} requests:\n" + "\n".join(problems[:40])
    assert _state(lab) == before, "fuzzing changed the lab's state"
    unhealthy = [h for h in probe_all(lab.endpoints) if not h.healthy]
    assert unhealthy == [], unhealthy


def _raw_requests(lab: Lab) -> list[str]:
    """Bytes no HTTP client library would send: raw control characters in the request line."""
    problems = []
    targets = [b"/v2.0/Users%00", b"/v2.0/Users/x%00y", b"/v2.0/Users%20", b"/v2.0/Groups%09",
               b"/lab/phone\x01", b"/v2.0/Users\x7f"]
    verify = urlsplit(lab.endpoints["verify"])
    for target in targets:
        with socket.create_connection((verify.hostname, verify.port), timeout=30) as sock:
            sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        status_line = answer.split(b"\r\n", 1)[0]
        if not status_line.startswith(b"HTTP/1.1 4"):
            problems.append(f"raw GET {target!r} -> {status_line!r}")
    return problems


def test_control_characters_in_the_path_are_a_readable_400(lab: Lab) -> None:
    """Answered by the edge (`iia.http_edge`) before scim2-server can copy the path into a
    Location header: the wire code and the sentence, and the directory untouched."""
    users = len(lab.verify.directory.users())
    for path in ("/v2.0/Users%00", "/v2.0/Users/x%0ay", "/v2.0/Users%20", "/v2.0/Users%09"):
        response = httpx.post(lab.verify.base_url + path, json={"userName": "eve@example.com"})
        assert response.status_code == 400, (path, response.status_code)
        body = response.json()
        assert body["error"] == "invalid_request"
        assert "control character" in body["error_description"] or \
            "white space" in body["error_description"]
    assert len(lab.verify.directory.users()) == users


def test_the_cases_seen_answering_500_are_readable_4xx(lab: Lab) -> None:
    """The console's counts, Antenna's poll and stream config, the model's body: each a 400
    whose sentence says what is wrong."""
    console = lab.endpoints["console"]
    for path in ("/calls?limit=abc", "/events?after=abc", "/calls?limit=-1"):
        response = httpx.get(console + path)
        assert response.status_code == 400, path
        assert "must be a whole number" in response.json()["error_description"]
    token = lab.antenna.register_client("fuzz-named")
    auth = {"Authorization": f"Bearer {token}"}
    try:
        stream = lab.streams["caep_receiver"]
        poll = httpx.post(f"{lab.antenna.issuer}/ssf/poll/{stream}", headers=auth,
                          json={"maxEvents": "ten"})
        assert poll.status_code in (400, 404)  # another client's stream is not found...
        own = httpx.post(f"{lab.antenna.issuer}/ssf/streams", headers=auth, json={})
        assert own.status_code == 201, own.text
        mine = own.json()["stream_id"]
        for body, words in (({"maxEvents": "ten"}, "maxEvents must be a whole number"),
                            ({"maxEvents": True}, "maxEvents must be a whole number"),
                            ({"returnImmediately": "yes"}, "returnImmediately must be")):
            poll = httpx.post(f"{lab.antenna.issuer}/ssf/poll/{mine}", headers=auth, json=body)
            assert poll.status_code == 400, body
            assert words in poll.text
        created = len(lab.antenna.store.streams("fuzz-named"))
        bad = httpx.post(f"{lab.antenna.issuer}/ssf/streams", headers=auth,
                         json={"delivery": "push"})
        assert bad.status_code == 400 and "delivery must be an object" in bad.text
        assert len(lab.antenna.store.streams("fuzz-named")) == created  # no stream made
    finally:
        for stream_id, _, _ in lab.antenna.store.streams("fuzz-named"):
            lab.antenna.store.delete_stream(stream_id)
    model = lab.endpoints["model"] + "/v1/messages"
    for body in ([], "text", {"model": "m", "max_tokens": 5, "messages": ["hi"]}):
        response = httpx.post(model, json=body, headers={"x-api-key": "lab"})
        assert response.status_code == 400, body
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"]

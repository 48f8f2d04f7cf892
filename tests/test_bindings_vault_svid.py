"""Vault and JWT-SVIDs without `exp` or `kid` (issue #12, item 9), against the lab's real OpenBao.

* `exp`: SPIFFE JWT-SVID §3.3 says validators MUST reject a token without it. OpenBao's JWT auth
  (hashicorp/cap `jwt.Validate`) has no option that requires it: a token without `exp` gets one
  at max(iat, nbf) + `expiration_leeway`, checked with `clock_skew_leeway`. The role sets both to
  -1 (fixtures/vault/bootstrap.json), so such a token is already expired when it is presented.
* `kid`: optional in a JWT-SVID (§2.2), and OpenBao cannot require it (its JWKS key set tries
  every key when `kid` is absent). What holds instead: SPIRE (here, the lab's authority) always
  sets a `kid` that the trust domain's published keys name.

Forged tokens are signed with the trust domain's own signing key (`lab.authority.keys`), the
strongest attacker this can be: everything but the missing claim or header is valid.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import hvac
import hvac.exceptions
import jwt
import pytest

from harness.lab import WORKLOAD_SPIFFE_ID, Lab
from iia.identity import WorkloadIdentity


def signed(lab: Lab, *, kid: bool = True, **overrides: Any) -> str:
    """A JWT-SVID for the MCP server's workload, signed with the trust domain's current key;
    `overrides` set claims (None drops one)."""
    now = int(time.time())
    claims = {"sub": WORKLOAD_SPIFFE_ID, "aud": "vault", "iat": now, "exp": now + 300,
              "iss": lab.endpoints["spiffe_oidc"]}
    claims.update(overrides)
    key = lab.authority.keys.current
    headers = {"typ": "JWT", **({"kid": key.kid} if kid else {})}
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key.private_key,
                      algorithm="ES256", headers=headers)


def login(lab: Lab, token: str) -> dict[str, Any]:
    return hvac.Client(url=lab.endpoints["vault"]).auth.jwt.jwt_login(
        role="mcp-server", jwt=token, path="jwt")


def refused(lab: Lab, token: str) -> str:
    """Vault answers 400 and issues no token (its audit log counts none); returns its words."""
    before = lab.openbao.login_count()
    with pytest.raises(hvac.exceptions.InvalidRequest) as err:
        login(lab, token)
    assert lab.openbao.login_count() == before
    return " ".join(err.value.errors or [])


@pytest.fixture
def role(lab: Lab) -> Iterator[dict[str, Any]]:
    """The role as bootstrapped; put back as the fixture has it after a test changes it."""
    layout = dict(lab.vault_layout.role)
    name = layout.pop("name")
    yield layout
    lab.openbao.root_client().write(f"auth/{lab.vault_layout.jwt_mount}/role/{name}", **layout)


def test_the_role_gives_a_token_without_exp_no_leeway(lab: Lab) -> None:
    data = lab.openbao.root_client().read("auth/jwt/role/mcp-server")["data"]
    assert (data["expiration_leeway"], data["clock_skew_leeway"]) == (-1, -1)
    assert (lab.vault_layout.role["expiration_leeway"],
            lab.vault_layout.role["clock_skew_leeway"]) == (-1, -1)


@pytest.mark.parametrize("case,overrides,words", [
    ("no exp, issued now", {"exp": None}, "token is expired"),
    ("no exp, issued 3 s ago", {"exp": None, "iat": -3}, "token is expired"),
    ("no exp or iat, not before now", {"exp": None, "iat": None, "nbf": 0},
     "token is expired"),
    ("no exp, issued in 2 s", {"exp": None, "iat": 2}, "not yet valid"),
    ("no exp, iat or nbf", {"exp": None, "iat": None},
     "no issued at (iat), not before (nbf), or expiration time (exp) claims in token"),
])
def test_an_svid_without_exp_is_refused(lab: Lab, case: str, overrides: dict[str, Any],
                                        words: str) -> None:
    now = int(time.time())
    claims = {k: (None if v is None else now + v) for k, v in overrides.items()}
    assert words in refused(lab, signed(lab, **claims)), case


def test_the_leeways_are_what_refuses_it(lab: Lab, role: dict[str, Any]) -> None:
    """The hole this closes: with the leeways the lab had (5 s each), the same exp-less token
    from the trust domain's key logged in."""
    token = signed(lab, exp=None)
    lab.openbao.root_client().write("auth/jwt/role/mcp-server",
                                    **{**role, "expiration_leeway": 5, "clock_skew_leeway": 5})
    assert login(lab, token)["auth"]["client_token"]
    lab.openbao.root_client().write("auth/jwt/role/mcp-server", **role)
    assert "token is expired" in refused(lab, token)


def test_svids_with_exp_still_log_in_without_clock_skew_leeway(
        lab: Lab, identity: WorkloadIdentity) -> None:
    """No leeway is no harm while SPIRE and Vault share a clock: SPIRE's iat is the current
    second, rounded down. The product's own login works, and so does a fresh SVID."""
    assert login(lab, lab.authority.sign_svid(WORKLOAD_SPIFFE_ID, ["vault"]))["auth"][
        "policies"] == ["mcp-server-verify-credential"]
    assert identity.credential().client_id == "iia-mcp-server"


def test_an_expired_svid_gets_no_leeway_either(lab: Lab) -> None:
    now = int(time.time())
    assert "token is expired" in refused(lab, signed(lab, iat=now - 300, exp=now - 1))


def test_openbao_cannot_require_a_kid(lab: Lab) -> None:
    """A limitation, kept visible: a kid-less token signed by a trust-domain key logs in (the
    JWKS key set tries every key). JWT-SVID §2.2 allows it; if OpenBao ever refuses it, this
    fails and the README's statement must change."""
    token = signed(lab, kid=False)
    assert "kid" not in jwt.get_unverified_header(token)
    assert login(lab, token)["auth"]["client_token"]


def test_spire_always_issues_svids_with_exp_and_a_published_kid(
        lab: Lab, identity: WorkloadIdentity) -> None:
    """What stands in for refusing kid-less SVIDs: every SVID the trust domain issues, through
    the Workload API the product uses and from the authority directly, carries `exp` and a
    `kid` that the keys Vault fetches (the OIDC discovery provider's JWKS) name."""
    published = {k["kid"] for k in httpx.get(f"{lab.endpoints['spiffe_oidc']}/keys",
                                             timeout=10).json()["keys"]}
    tokens = [identity.svid("vault").token, identity.svid(lab.verify.issuer).token,
              lab.authority.sign_svid(WORKLOAD_SPIFFE_ID, ["vault"]),
              lab.authority.sign_svid("spiffe://iia.lab/other", ["a", "b"])]
    for token in tokens:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
        assert header["kid"] in published and header["alg"] == "ES256"
        assert claims["exp"] - claims["iat"] == int(lab.authority.svid_ttl)

"""`IIA_LAB_OBO_TTL`: the lifetime of the on-behalf-of tokens the lab's Verify mints (RFC 8693
token exchange; default 900 s, at most 3600 s), read with the other `IIA_LAB_*` trainer knobs."""

from __future__ import annotations

from collections.abc import Iterator

import jwt
import pytest

from harness.errors import HarnessError
from harness.lab import Lab, LabSettings
from iia.identity import IdentitySettings, WorkloadIdentity
from tests.helpers import exchange, rar, user_token


def test_the_knob_defaults_to_900_and_is_read_from_the_environment() -> None:
    assert LabSettings.from_env({}).obo_ttl == 900
    assert LabSettings.from_env({"IIA_LAB_OBO_TTL": "120"}).obo_ttl == 120
    assert LabSettings.from_env({"IIA_LAB_OBO_TTL": "3600"}).obo_ttl == 3600


@pytest.mark.parametrize("value,message", [
    ("0", "positive"), ("-5", "positive"), ("3601", "at most 3600"), ("1.5", "whole number"),
    ("fifteen minutes", "number of seconds"), ("nan", "whole number"), ("inf", "at most 3600"),
])
def test_the_knob_is_validated(value: str, message: str) -> None:
    with pytest.raises(HarnessError, match=message) as caught:
        LabSettings.from_env({"IIA_LAB_OBO_TTL": value})
    assert "IIA_LAB_OBO_TTL" in str(caught.value)


@pytest.mark.parametrize("value", [0, 3601, 1.5, True])
def test_the_knob_is_validated_on_construction_too(value: object) -> None:
    with pytest.raises(HarnessError, match="IIA_LAB_OBO_TTL"):
        LabSettings(obo_ttl=value)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def short_lab() -> Iterator[Lab]:
    with Lab(LabSettings.from_env({"IIA_LAB_OBO_TTL": "120"})) as lab:
        yield lab


def test_a_lab_started_with_the_knob_mints_obo_tokens_of_that_lifetime(short_lab: Lab) -> None:
    identity = WorkloadIdentity(IdentitySettings.from_env(short_lab.iia_env()))
    try:
        alice = user_token(short_lab)["access_token"]
        response = exchange(short_lab, identity, alice, rar(short_lab, "verify_read_users"))
    finally:
        identity.close()
    assert response.status_code == 200, response.text
    body = response.json()
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 120
    assert body["expires_in"] == 120
    # the user's own access token keeps its own lifetime: the knob is the OBO tokens' only
    user = jwt.decode(alice, options={"verify_signature": False})
    assert user["exp"] - user["iat"] == 900

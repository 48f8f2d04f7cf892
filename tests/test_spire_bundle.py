"""The SPIRE stand-in's trust bundle across restarts (harness.spire.bundle), on a clock the test
moves: earlier runs' public keys stay published exactly as long as an SVID they signed can live,
and the file never holds a private key. (tests/test_zone_processes.py shows the same over a real
process killed with SIGKILL.)"""

from __future__ import annotations

import json
from pathlib import Path

import jwt
import pytest

from harness.spire import JwtAuthority
from harness.spire.bundle import BundleFileError
from harness.spire.validation import SvidValidationError, validate_jwt_svid
from tests.conftest import FakeClock

SUB = "spiffe://iia.lab/agentic-workload"


def _authority(path: Path, clock: FakeClock, ttl: float = 300) -> JwtAuthority:
    return JwtAuthority("iia.lab", "http://127.0.0.1:9", svid_ttl=ttl, rotation_period=3600,
                        clock=clock, bundle_file=path)


def _valid(authority: JwtAuthority, token: str, clock: FakeClock) -> bool:
    try:
        validate_jwt_svid(token, {"iia.lab": authority.bundle.public_keys()}, "vault",
                          now=clock())
    except SvidValidationError:
        return False
    return True


def test_the_key_signing_at_a_crash_stays_until_its_last_svid_can_expire(
        tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "bundle.json"
    first = _authority(path, clock)
    token = first.sign_svid(SUB, ["vault"])
    old = first.keys.current.kid
    clock.advance(100)  # the process dies here, its key still signing
    second = _authority(path, clock)  # restart: reads the file
    assert second.bundle.earlier_kids() == [old]
    assert {k["kid"] for k in second.bundle.jwks()["keys"]} == {old, second.keys.current.kid}
    assert _valid(second, token, clock)
    heard: list[None] = []
    second.bundle.on_change(lambda: heard.append(None))
    clock.advance(299)  # start + retain not reached yet
    assert second.bundle.tick() is False and second.bundle.earlier_kids() == [old]
    clock.advance(2)
    assert second.bundle.tick() is True and heard  # pruned, and relying parties hear of it
    assert second.bundle.earlier_kids() == []
    assert old not in {k["kid"] for k in json.loads(path.read_text())["keys"]}


def test_a_key_retired_before_the_restart_stays_until_retirement_plus_ttl(
        tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "bundle.json"
    first = _authority(path, clock, ttl=60)
    retired = first.keys.current.kid
    first.keys.rotate()  # written to the file by the change listener
    assert json.loads(path.read_text())["retain_until"][retired] == pytest.approx(clock() + 60)
    clock.advance(30)
    second = _authority(path, clock, ttl=60)
    assert set(second.bundle.earlier_kids()) == {retired, first.keys.current.kid}
    clock.advance(31)  # retired + 60 s passed; the other (signing at the crash) stays
    second.bundle.tick()
    assert second.bundle.earlier_kids() == [first.keys.current.kid]
    clock.advance(100)
    third = _authority(path, clock, ttl=60)  # long after: nothing of the first run is left
    assert first.keys.current.kid not in third.bundle.earlier_kids()


def test_the_file_holds_public_keys_only(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "bundle.json"
    authority = _authority(path, clock)
    authority.keys.rotate()
    for key in json.loads(path.read_text())["keys"]:
        assert set(key) == {"kty", "crv", "x", "y", "kid", "use", "alg"}
        assert key["use"] == "jwt-svid"
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_a_file_with_a_private_key_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "bundle.json"
    first = _authority(path, clock)
    doc = json.loads(path.read_text())
    private = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(first.keys.current.private_key))
    doc["keys"] = [{**private, "kid": "leaked"}]
    path.write_text(json.dumps(doc))
    with pytest.raises(BundleFileError, match="holds a private key \\(leaked\\); it must hold "
                                              "public keys only"):
        _authority(path, clock)


@pytest.mark.parametrize("content", ["{not json", "[]", '{"keys": [{"kty": "EC"}]}'])
def test_an_unreadable_file_is_an_error_naming_it(tmp_path: Path, clock: FakeClock,
                                                  content: str) -> None:
    path = tmp_path / "bundle.json"
    path.write_text(content)
    with pytest.raises(BundleFileError, match=f"the bundle file {path}"):
        _authority(path, clock)
    assert path.read_text() == content  # not overwritten

"""The tenant's Cedar policy is a file a trainer can edit while the lab runs: the next exchange
follows the edit, and a policy that does not parse refuses everything (never fails open)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.lab import Lab, LabSettings
from harness.paths import fixtures_dir
from iia.identity import IdentitySettings, WorkloadIdentity
from tests.helpers import exchange, rar, user_token


@pytest.fixture(scope="module")
def own_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    fixtures = tmp_path_factory.mktemp("fixtures")
    shutil.copytree(fixtures_dir(), fixtures, dirs_exist_ok=True)
    with Lab(LabSettings(fixtures=fixtures)) as lab:
        yield lab


@pytest.fixture
def policy_file(own_lab: Lab) -> Iterator[Path]:
    path = own_lab.settings.fixtures / "policy" / "token_exchange.cedar"
    original = path.read_text()
    yield path
    path.write_text(original)


def test_an_edit_applies_to_the_next_exchange(own_lab: Lab, policy_file: Path) -> None:
    ident = WorkloadIdentity(IdentitySettings.from_env(own_lab.iia_env()))
    alice = user_token(own_lab)["access_token"]
    obj = rar(own_lab, "verify_read_applications")
    try:
        assert exchange(own_lab, ident, alice, obj).status_code == 200
        policy_file.write_text(policy_file.read_text() + '''
@id("no-app-inventory-for-agents")
@reason("the application inventory is off limits to agents this week")
forbid (principal, action == Verify::Action::"verify_read_applications", resource);
''')
        refused = exchange(own_lab, ident, alice, obj)
        assert refused.json()["error"] == "access_denied"
        assert refused.json()["policy_id"] == "no-app-inventory-for-agents"
        assert "off limits" in refused.json()["error_description"]
        assert exchange(own_lab, ident, alice, rar(own_lab, "verify_read_users")).status_code \
            == 200  # only that action changed

        policy_file.write_text("permit (principal, action, resource) when {")  # mid-edit
        broken = exchange(own_lab, ident, alice, rar(own_lab, "verify_read_users"))
        assert broken.json()["error"] == "access_denied"
        assert broken.json()["policy_id"] == "policy-unavailable"
        assert "does not parse" in broken.json()["error_description"]
    finally:
        ident.close()


def test_removing_the_tier4_rule_does_not_open_tier4(own_lab: Lab, policy_file: Path) -> None:
    """Without its forbid, tier 4 still has no permit: default deny."""
    ident = WorkloadIdentity(IdentitySettings.from_env(own_lab.iia_env()))
    alice = user_token(own_lab)["access_token"]
    text = policy_file.read_text()
    start = text.index('@id("tier4-blocked")')
    end = text.index("resource);", start) + len("resource);")
    policy_file.write_text(text[:start] + text[end:])
    try:
        response = exchange(own_lab, ident, alice, rar(own_lab, "verify_delete_user",
                                                       target="u-1"))
        assert response.json()["error"] == "access_denied"
        assert response.json()["policy_id"] == "default-deny"
    finally:
        ident.close()

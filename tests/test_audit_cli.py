"""`iia-lab audit` on the process lab, as an auditor runs it (issue #20): the durable trail
outlives `iia-lab down`; after `down` and `up`, `audit --call C` tells a refused (tier-4)
call's whole story; a full scenario (tiers 1 to 4, pushes approved on the phone) leaves no
token, secret, SVID or private key in it; bad questions get a sentence and a non-zero exit;
`iia-lab clean` removes it. Every wait is for a condition, with a generous timeout."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from harness.lab_client import LabClient
from tests.test_cli import lab_dir, run  # noqa: F401  (lab_dir is a fixture)
from tests.test_no_secrets_at_rest import secrets_in


def _endpoints(directory: Path) -> dict[str, str]:
    return dict(json.loads((directory / "endpoints.json").read_text()))


def _approve_next_push(client: LabClient) -> threading.Thread:
    def answer() -> None:
        push = client.wait_for_push(timeout=120)
        client.answer(push["id"], True)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return thread


def _scenario(directory: Path) -> None:
    """Tier 1, tier 4 (refused), tier 2 and tier 3 (each approved on alice's phone)."""
    client = LabClient(_endpoints(directory), "alice@example.com")
    try:
        client.ask("list users")
        client.ask("make bob@example.com an admin")
        for prompt in ("create Yara Young, yara@example.com", "deactivate nina@example.com"):
            answering = _approve_next_push(client)
            client.ask(prompt)
            answering.join(timeout=180)
            assert not answering.is_alive()
    finally:
        client.close()


def _audit(directory: Path, *args: str) -> list[dict]:
    result = run(directory, "audit", "--jsonl", *args)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_a_refused_calls_story_survives_down_and_up(lab_dir: Path,  # noqa: F811
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IIA_LAB_DIR", str(lab_dir))  # where the lab's phones keep the passkeys
    assert run(lab_dir, "up", "--detach").returncode == 0
    _scenario(lab_dir)
    assert run(lab_dir, "down").returncode == 0
    trail = lab_dir / "audit"
    assert (trail / "events.jsonl").stat().st_size and (trail / "decisions.jsonl").stat().st_size

    # no token, secret, SVID or private key in the store after the full scenario
    for path in trail.iterdir():
        assert not secrets_in(path.read_text()), path
        assert path.stat().st_mode & 0o777 == 0o600

    assert run(lab_dir, "up", "--detach").returncode == 0
    refused_clean = run(lab_dir, "clean")
    assert refused_clean.returncode == 1 and "`iia-lab down` first" in refused_clean.stderr
    assert trail.is_dir()

    records = _audit(lab_dir, "--user", "alice@example.com", "--since", "1h")
    by_tool = {r["tool"]: r for r in records}
    assert {"list_users", "grant_admin_role", "create_user", "deactivate_user"} <= set(by_tool)
    refused = by_tool["grant_admin_role"]
    story = run(lab_dir, "audit", "--call", refused["callId"])
    assert story.returncode == 0, story.stderr
    text = story.stdout
    assert "Alice Anders <alice@example.com>" in text
    assert "grant_admin_role (tier 4" in text and "refused by the IdP" in text
    assert "IdP token_exchange: denied (access_denied, policy tier4-blocked)" in text
    assert "OBO token: none issued" in text and "SETs: " in text
    [record] = _audit(lab_dir, "--call", refused["callId"])
    assert record["oboJti"] is None and record["policyId"] == "tier4-blocked"
    assert [d["kind"] for d in record["decisions"]] == ["token_exchange"]
    assert any(e["type"] == "agent:token_exchange_denied" for e in record["events"])

    # a call that went through: its OBO jti joins the IdP's issue and the admin API's check
    done = by_tool["list_users"]
    assert done["outcome"] == "done" and done["oboJti"]
    kinds = {d["kind"]: d for d in done["decisions"]}
    assert kinds["token_exchange"]["outcome"] == "issued"
    assert kinds["token_exchange"]["jti"] == kinds["admin_api"]["jti"] == done["oboJti"]
    assert done["setJtis"]
    # a tier-3 call: the push the user approved is part of its story
    assert any(d["kind"] == "ciba" and d["outcome"] == "approved"
               for d in by_tool["deactivate_user"]["decisions"])

    # bad questions: a sentence and a non-zero exit, never a traceback
    for args, sentence in ((("--since", "nonsense"), "--since takes a duration"),
                           (("--call", "no-such-call"), "no call 'no-such-call'")):
        bad = run(lab_dir, "audit", *args)
        assert bad.returncode == 1 and sentence in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr + bad.stdout
    nobody = run(lab_dir, "audit", "--user", "nobody@example.com")
    assert nobody.returncode == 0 and nobody.stdout.strip() == "No calls match."

    assert run(lab_dir, "down").returncode == 0
    cleaned = run(lab_dir, "clean")
    assert cleaned.returncode == 0 and "audit/" in cleaned.stdout
    assert not trail.exists()
    gone = run(lab_dir, "audit")
    assert gone.returncode == 1 and "no audit trail" in gone.stderr

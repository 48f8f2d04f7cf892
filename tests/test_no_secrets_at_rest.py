"""No key, token or secret at rest: not in the repository, not under `.lab/`, not in the log."""

from __future__ import annotations

import re
import stat
import subprocess
from pathlib import Path

import pytest

from harness.authenticator import FILE_NAME as AUTHENTICATOR_FILE
from harness.authenticator import SoftwareAuthenticator
from harness.lab import Lab
from harness.paths import project_root
from iia.events import looks_like_secret

PATTERNS = [
    re.compile(r"-----BEGIN ([A-Z]+ )?PRIVATE KEY-----"),
    re.compile(r"\bhv[sbr]\.[A-Za-z0-9_-]{20,}|\b[sbr]\.[A-Za-z0-9]{24}\b"),
    re.compile(r"\bsk-ant-[A-Za-z0-9_-]{10,}"),
]


def secrets_in(text: str) -> list[str]:
    found = [p.pattern for p in PATTERNS if p.search(text)]
    if looks_like_secret(text):
        found.append("JWT-shaped value")
    return found


def test_the_scanner_finds_what_it_looks_for(lab: Lab) -> None:
    """Guard against a scanner that can never fail."""
    assert secrets_in(lab.authority.sign_svid("spiffe://iia.lab/x", ["vault"]))
    assert secrets_in("-----BEGIN EC " + "PRIVATE KEY-----\nMHc...")  # split: not at rest here
    assert secrets_in("token=hvs." + "A" * 24)
    assert secrets_in("token=s." + "Ab1" * 8)  # OpenBao's form
    assert not secrets_in("IIA_VAULT_ADDR=http://127.0.0.1:8200\n")


def test_no_committed_file_holds_a_key_or_token() -> None:
    root = project_root()
    try:
        # committed files and the ones about to be (untracked, not ignored)
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard"], cwd=root, capture_output=True,
                                check=True, timeout=30).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"cannot list the committed files with git: {exc}")
    offenders = {}
    scanned = 0
    for name in filter(None, listed):
        path = root / name
        if not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        scanned += 1
        hits = secrets_in(text)
        if hits:
            offenders[name] = hits
    assert scanned >= 20, "the repository listing looks empty"
    assert not offenders


def exempt(directory: Path, path: Path) -> bool:
    """`<lab dir>/authenticator.json` holds the software authenticator's private keys by design
    (issue #16 item 4): it is skipped by the scan only when it is the owner's alone (0600 at
    most). Anything else that holds a key is an offender."""
    if path.parent != directory or path.name != AUTHENTICATOR_FILE:
        return False
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode & 0o077 == 0, f"{path} holds private keys and is mode {mode:o}, not 0600"
    return True


def test_the_authenticator_file_is_exempt_only_at_0600(tmp_path: Path) -> None:
    kept = SoftwareAuthenticator().save(tmp_path / AUTHENTICATOR_FILE)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and exempt(tmp_path, kept)
    kept.chmod(0o644)
    with pytest.raises(AssertionError, match="mode 644"):
        exempt(tmp_path, kept)
    elsewhere = tmp_path / "logs"
    elsewhere.mkdir()
    copied = elsewhere / AUTHENTICATOR_FILE
    copied.write_text(kept.read_text())
    copied.chmod(0o600)
    assert not exempt(tmp_path, copied)  # only the lab dir's own file


def test_lab_state_holds_only_ids_and_urls(lab: Lab, tmp_path: Path) -> None:
    lab.write_state(tmp_path, pid=1)
    credential_secret = lab.openbao.root_client().secrets.kv.v2.read_secret_version(
        path="mcp-server", mount_point="ibm-verify",
        raise_on_deleted_version=True)["data"]["data"]["client_secret"]
    root_token = lab.openbao._root_token
    directories = [tmp_path]
    real = project_root() / ".lab"
    if real.is_dir():
        directories.append(real)
    scanned = 0
    for directory in directories:
        for path in directory.rglob("*"):
            if not path.is_file() or exempt(directory, path):
                continue
            text = path.read_text(errors="replace")
            scanned += 1
            assert not secrets_in(text), path
            assert credential_secret not in text and root_token not in text, path
    assert scanned >= 3


def test_openbao_output_never_keeps_the_root_token(lab: Lab) -> None:
    kept = "\n".join(lab.openbao._output)
    assert "Root Token" not in kept and lab.openbao._root_token not in kept
    assert "Unseal Key" not in kept
    assert "OpenBao" in kept  # the output was captured at all

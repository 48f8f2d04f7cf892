"""`make demo`: a headless walkthrough through the real chain, printed for a terminal.

It starts its own lab (or attaches to the one `iia-lab up` runs) and walks the secretless
workload-identity chain: SVID, Vault login, the credential, the warm path, and rotation.
"""

from __future__ import annotations

import os
import sys

from harness.notebook import attach_or_start
from iia.events import EventBus, SecurityEvent
from iia.identity import IdentitySettings, WorkloadIdentity
from iia.oauth.client import AuthorizationServerClient

_COLOR = sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def _c(code: str, text: str) -> str:
    return f"\033[{code}m{text}\033[0m" if _COLOR else text


def _show(event: SecurityEvent) -> None:
    wire = event.to_dict()
    color = {"success": "32", "denied": "31", "error": "31", "retry": "33"}.get(event.outcome, "0")
    extras = {k: v for k, v in wire.items() if k not in
              ("type", "outcome", "eventId", "timestamp", "durationMs", "spiffeId")}
    print(f"  {_c(color, f'{event.type:<22}')} {wire.get('durationMs', 0):>4} ms  {extras}")


def main() -> int:
    session = attach_or_start()
    print(_c("1", "IIA Lab demo: the secretless workload identity chain"))
    print(f"  {session.describe()}\n")
    events = EventBus()
    events.subscribe(_show)
    identity = WorkloadIdentity(IdentitySettings.from_env(session.env), events=events)
    idp = AuthorizationServerClient(session.env["IIA_VERIFY_ISSUER"])
    try:
        print(_c("1", "First call: SVID from the Workload API -> Vault login -> credential"))
        first = identity.credential()
        print(_c("1", "\nSecond call: the chain is warm"))
        identity.credential()
        print(_c("1", "\nUse the credential at Verify (an introspection call): it rotates"))
        identity.with_credential(lambda cred: idp.introspect("probe", cred))
        after = identity.credential()
        print(f"\n  credential version {first.version} -> {after.version}; "
              f"secret changed: {after.client_secret != first.client_secret}")
        print(_c("32", "\nNo secret at rest: only IDs and URLs were configured."))
        return 0
    finally:
        idp.close()
        identity.close()
        session.close()


if __name__ == "__main__":
    sys.exit(main())

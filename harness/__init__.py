"""The simulated world of IIA Lab.

Simulated *products* only: a SPIFFE Workload API (SPIRE agent), a real OpenBao server that the
harness starts and bootstraps, an IBM Verify tenant, a CAEP receiver and a scripted stand-in for
Claude. Each speaks the real wire protocol so the real clients work against it unchanged.
`iia-lab` (harness.cli) runs them all.
"""

from __future__ import annotations

__all__: list[str] = []

"""IIA: the product side of IIA Lab.

An MCP server that enforces identity on every tool call an untrusted agent makes, the agent loop
that talks to Claude inside our trust zone, the workload-identity chain (SPIFFE -> Vault -> a
rotating IdP credential) and the security-event stream.

`iia` talks to the world only through standard protocols on configured URLs; it never imports
the `harness` package that simulates the lab's products.
"""

from __future__ import annotations

__all__ = ["__version__"]
__version__ = "0.1.0"

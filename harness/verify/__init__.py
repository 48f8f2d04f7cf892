"""A simulated IBM Security Verify tenant (OIDC provider, token exchange, admin API)."""

from __future__ import annotations

from harness.verify.tenant import VerifyTenant

__all__ = ["VerifyTenant"]

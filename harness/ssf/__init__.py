"""Shared Signals receiving side: validating Security Event Tokens pushed by a transmitter."""

from __future__ import annotations

from harness.ssf.set_validation import PushError, SetValidator, read_push

__all__ = ["PushError", "SetValidator", "read_push"]

"""The root of every error the harness raises while running the simulated world."""

from __future__ import annotations

__all__ = ["HarnessError", "LabAlreadyRunningError", "ServiceStartError"]


class HarnessError(Exception):
    """Base class for harness failures (a service that would not start, a bad fixture...)."""


class ServiceStartError(HarnessError):
    """A lab service did not become healthy in time; the message names it and why."""


class LabAlreadyRunningError(HarnessError):
    """`iia-lab up` found another lab holding the lock in the same lab directory."""

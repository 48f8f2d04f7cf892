"""Shared fixtures: one in-process lab (real servers on loopback) for the whole session."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from harness.lab import Lab
from harness.verify.ciba import PushLimits
from iia.events import EventBus
from iia.identity import IdentitySettings, WorkloadIdentity

SUITE_PER_MINUTE = 60


class FakeClock:
    """Real time plus an offset the test moves forward (for TTL and cache expiry)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    with Lab() as running:
        # the suite is not a person: it denies or leaves unanswered more than the tenant's 10
        # pushes a minute for alice (tests/test_bindings_push_limits.py sets its own limits)
        running.verify.ciba.limits = PushLimits(
            max_pending=running.verify.ciba.limits.max_pending, max_per_minute=SUITE_PER_MINUTE)
        yield running


@pytest.fixture
def lab_env(lab: Lab) -> dict[str, str]:
    return lab.iia_env()


@pytest.fixture
def events() -> EventBus:
    return EventBus()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def identity(lab_env: dict[str, str], events: EventBus) -> Iterator[WorkloadIdentity]:
    ident = WorkloadIdentity(IdentitySettings.from_env(lab_env), events=events)
    yield ident
    ident.close()


@pytest.fixture
def grace(lab: Lab) -> Iterator[None]:
    """Restore the rotation grace window after a test changes it."""
    before = lab.client_secret.grace_seconds
    yield
    lab.client_secret.grace_seconds = before

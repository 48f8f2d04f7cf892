"""Security events: one schema for every decision, and an in-process bus.

The schema: docs/architecture.md §5 (the article's fields: `type`, `userEmail`, `toolName`, `tier`,
`rarType`, `rarSummary`, `durationMs`, `outcome`, `reason`, `actorTokenType`, `spiffeId`,
`oboTokenExpiresIn`, plus `eventId`, `timestamp`, `sessionId` and correlation ids). Events are
rendered with those camelCase wire names by `to_dict`.

No token, secret or SVID may ever sit in an event: `EventBus.publish` replaces anything shaped
like a JWT or a Vault token with `[redacted]` (and counts it in `redactions`, which the tests keep
at zero for the chain's own events). Redacting rather than refusing matters: tool arguments come
from the model, and a model that puts a token-shaped string in an argument must neither see it
echoed back nor be able to crash the call and erase its audit trail.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import re
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TypedDict, Unpack

__all__ = [
    "REDACTED",
    "EventBus",
    "EventFields",
    "SecurityEvent",
    "bound_fields",
    "current_fields",
    "looks_like_secret",
    "redact",
]

# A compact JWS/JWT (three base64url segments, the first a JSON header) or a Vault/OpenBao token.
_SECRET_PATTERNS = (
    re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
    # Vault tokens: hvs./hvb./hvr. (Vault >= 1.10) and the legacy s./b./r. form (OpenBao)
    re.compile(r"\bhv[sbr]\.[A-Za-z0-9_-]{20,}|\b[sbr]\.[A-Za-z0-9]{24}\b"),
)


def looks_like_secret(value: str) -> bool:
    """True when `value` contains something shaped like a JWT or a Vault token."""
    return any(p.search(value) for p in _SECRET_PATTERNS)


REDACTED = "[redacted]"


def redact(value: Any) -> Any:
    """`value` with every token-shaped substring replaced (strings, nested dicts and lists)."""
    if isinstance(value, str):
        for pattern in _SECRET_PATTERNS:
            value = pattern.sub(REDACTED, value)
        return value
    if isinstance(value, Mapping):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


_WIRE_NAMES = {
    "type": "type",
    "outcome": "outcome",
    "reason": "reason",
    "duration_ms": "durationMs",
    "user_email": "userEmail",
    "session_id": "sessionId",
    "tool_name": "toolName",
    "tier": "tier",
    "rar_type": "rarType",
    "rar_summary": "rarSummary",
    "actor_token_type": "actorTokenType",
    "spiffe_id": "spiffeId",
    "obo_token_expires_in": "oboTokenExpiresIn",
    "call_id": "callId",
    "event_id": "eventId",
    "timestamp": "timestamp",
}


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    """One decision. `details` holds type-specific fields (wire names, e.g. `svidAgeS`);
    `correlation` the ids that join this record to others (e.g. `oboJti`, `approvalId`).

    `outcome` is free text and not validated; the chain uses `success`, `denied`, `error`,
    `pending`, `retry`, and `expired` (a push nobody answered in time, `agent:hitl_expired`)."""

    type: str
    outcome: str = "success"
    reason: str | None = None
    duration_ms: int | None = None
    user_email: str | None = None
    session_id: str | None = None
    tool_name: str | None = None
    tier: int | None = None
    rar_type: str | None = None
    rar_summary: str | None = None
    actor_token_type: str | None = None
    spiffe_id: str | None = None
    obo_token_expires_in: int | None = None
    call_id: str | None = None  # joins every event of one tool call
    details: Mapping[str, Any] = field(default_factory=dict)
    correlation: Mapping[str, str] = field(default_factory=dict)
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    timestamp: str = field(default_factory=_now_iso)

    def to_dict(self) -> dict[str, Any]:
        """The wire form: camelCase names, empty fields left out."""
        out: dict[str, Any] = {}
        for attr, wire in _WIRE_NAMES.items():
            value = getattr(self, attr)
            if value is not None:
                out[wire] = value
        out.update(self.details)
        if self.correlation:
            out["correlation"] = dict(self.correlation)
        return out

    def strings(self) -> Iterator[str]:
        """Every string value in the event, nested ones included (for the secret guard)."""
        stack: list[Any] = [self.to_dict()]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                yield item
            elif isinstance(item, Mapping):
                stack.extend(item.values())
            elif isinstance(item, list | tuple):
                stack.extend(item)


class EventFields(TypedDict, total=False):
    """The fields `EventBus.emit` and `bound_fields` take: `SecurityEvent`'s, but `type` (and
    the generated `event_id`, `timestamp`). A misspelt field is a type error, not a lost one."""

    outcome: str
    reason: str | None
    duration_ms: int | None
    user_email: str | None
    session_id: str | None
    tool_name: str | None
    tier: int | None
    rar_type: str | None
    rar_summary: str | None
    actor_token_type: str | None
    spiffe_id: str | None
    obo_token_expires_in: int | None
    call_id: str | None
    details: Mapping[str, Any]
    correlation: Mapping[str, str]


def _redacted(event: SecurityEvent) -> SecurityEvent:
    changes = {f.name: redact(getattr(event, f.name)) for f in dataclasses.fields(event)
               if isinstance(getattr(event, f.name), str | Mapping)}
    return dataclasses.replace(event, **changes)


Subscriber = Callable[[SecurityEvent], None]

log = logging.getLogger(__name__)

_NO_FIELDS: Mapping[str, Any] = MappingProxyType({})
_AMBIENT: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "iia_event_fields", default=_NO_FIELDS)


def current_fields() -> Mapping[str, Any]:
    """The fields bound in this context (empty outside any `bound_fields`)."""
    return _AMBIENT.get()


@contextlib.contextmanager
def bound_fields(**fields: Unpack[EventFields]) -> Iterator[None]:
    """Attach fields (e.g. `session_id`, `user_email`, `tool_name`) to every event emitted in
    this context, so a lower layer (the identity chain) need not know whose call it serves."""
    token = _AMBIENT.set(MappingProxyType({**_AMBIENT.get(), **fields}))
    try:
        yield
    finally:
        _AMBIENT.reset(token)


class EventBus:
    """Thread-safe publish/subscribe with a bounded history for late readers (panels, notebooks)."""

    def __init__(self, history: int = 1000) -> None:
        self._lock = threading.Lock()
        self._history: deque[tuple[int, SecurityEvent]] = deque(maxlen=history)
        self._seq = 0  # events ever published: a cursor that survives the bounded history
        self._subscribers: list[Subscriber] = []
        self._local = threading.local()  # events a subscriber publishes wait their turn
        self.redactions = 0  # instrumentation: events redacted (the tests keep it at zero)

    def publish(self, event: SecurityEvent) -> SecurityEvent:
        if any(looks_like_secret(value) for value in event.strings()):
            event = _redacted(event)
            with self._lock:
                self.redactions += 1
            log.warning("event %s carried a token-shaped value; it was redacted", event.type)
        with self._lock:
            self._seq += 1
            self._history.append((self._seq, event))
            subscribers = list(self._subscribers)
        queue: deque[tuple[SecurityEvent, list[Subscriber]]] | None = getattr(
            self._local, "queue", None)
        if queue is not None:
            # published from inside a subscriber: every subscriber sees the event that caused
            # it first, then this one (order is causal for every reader)
            queue.append((event, subscribers))
            return event
        self._local.queue = deque([(event, subscribers)])
        try:
            while self._local.queue:
                current, targets = self._local.queue.popleft()
                for subscriber in targets:
                    subscriber(current)
        finally:
            self._local.queue = None
        return event

    def emit(self, type: str, **fields: Unpack[EventFields]) -> SecurityEvent:
        """Build and publish an event in one call; fields bound by `bound_fields` fill gaps."""
        ambient = _AMBIENT.get()
        merged = {**ambient, **{k: v for k, v in fields.items() if v is not None}}
        if "correlation" in ambient and "correlation" in fields:
            merged["correlation"] = {**ambient["correlation"], **fields["correlation"]}
        return self.publish(SecurityEvent(type=type, **merged))

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Register a callback; returns the function that unsubscribes it."""
        with self._lock:
            self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            with self._lock:
                if subscriber in self._subscribers:
                    self._subscribers.remove(subscriber)

        return unsubscribe

    def recent(self, limit: int | None = None, *, type: str | None = None) -> list[SecurityEvent]:
        with self._lock:
            items = [e for _, e in self._history if type is None or e.type == type]
        return items if limit is None else items[-limit:]

    def cursor(self) -> int:
        """Where the stream is now: pass it to `since` later to get what came after."""
        with self._lock:
            return self._seq

    def since(self, cursor: int) -> tuple[list[SecurityEvent], int]:
        """Events published after `cursor` (still in the history), and the new cursor."""
        with self._lock:
            return [e for seq, e in self._history if seq > cursor], self._seq

    def clear(self) -> None:
        with self._lock:
            self._history.clear()

"""Antenna, the SSF 1.0 transmitter: streams, SETs for every decision, durable delivery.

Every decision on the event bus becomes one SET (`event_types.FOR_BUS_EVENT`), enqueued in the
SQLite outbox of each stream that asked for its type and is not disabled, then pushed (RFC 8935)
by the stream's worker or handed out on poll (RFC 8936). The emitting thread only builds the
claims and queues one event's SETs in the outbox (`outbox.OutboxWriter`), whose one writer at a
time commits what concurrent emitters gathered in one transaction and returns to each once its
SETs are on disk (group commit); signing and pushing happen in the stream's worker, off the call
path. Management clients authenticate with a bearer token issued to them at registration
(`register_client`); only digests of those tokens are kept. The anomaly detector watches the
same bus and revokes sessions through CAEP.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from iia.antenna import caep
from iia.antenna.anomaly import AnomalyDetector, AnomalyRules
from iia.antenna.delivery import PushWorker
from iia.antenna.event_types import CAEP, FOR_BUS_EVENT, SUPPORTED, VERIFICATION
from iia.antenna.outbox import OutboxWriter
from iia.antenna.sets import SetSigner
from iia.antenna.store import NewSet, OutboxRow, Store
from iia.errors import IIAError
from iia.events import EventBus, SecurityEvent
from iia.settings import AntennaBounds

__all__ = ["POLL", "PUSH", "Antenna", "StreamError"]

PUSH = "urn:ietf:rfc:8935"
POLL = "urn:ietf:rfc:8936"
STATUSES = ("enabled", "paused", "disabled")
REVOCATIONS_KEPT = 1000


class StreamError(IIAError, code="invalid_request", status=400):
    """A management request Antenna refuses; `status` is the HTTP status (SSF §8.1)."""

    def __init__(self, description: str, status: int = 400) -> None:
        super().__init__(description, status=status)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Antenna:
    def __init__(self, issuer: str, store: Path | str, *, events: EventBus | None = None,
                 rules: AnomalyRules | None = None,
                 clock: Callable[[], float] = time.time,
                 bounds: AntennaBounds | None = None) -> None:
        bounds = bounds or AntennaBounds()
        self.issuer = issuer.rstrip("/")
        self.signer = SetSigner(self.issuer)
        self.store = Store(store, clock, keep_seconds=bounds.keep_delivered_seconds,
                           keep_rows=bounds.keep_delivered_sets)
        self.outbox = OutboxWriter(self.store, on_commit=self._committed)
        self.events = events
        self._clock = clock
        self._lock = threading.Lock()
        self._clients: dict[str, str] = {}  # token digest -> client name
        self._workers: dict[str, PushWorker] = {}
        self._poll_waiters = threading.Condition()
        # sid -> {emitted_at, first_delivered_at}: the newest `REVOCATIONS_KEPT` revocations
        self.revocations: dict[str, dict[str, float]] = {}
        self.detector = AnomalyDetector(rules or AnomalyRules(), self.revoke_session, clock,
                                        idle_seconds=bounds.anomaly_idle_seconds)
        self._unsubscribe: Callable[[], None] | None = None

    # -- life -------------------------------------------------------------------------------

    def start(self) -> Antenna:
        if self.events is not None and self._unsubscribe is None:
            self._unsubscribe = self.events.subscribe(self.on_bus_event)
        for stream_id, config, _ in self.store.streams():
            if config["delivery"]["method"] == PUSH:
                self._start_worker(stream_id)
        return self

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.outbox.close()  # what was handed over is committed before anything stops
        with self._lock:
            workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            worker.stop()
        self.store.close()

    # -- management clients -----------------------------------------------------------------

    def register_client(self, name: str) -> str:
        """Issue a management bearer token for `name` (returned once, kept as a digest)."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._clients[_digest(token)] = name
        return token

    def client(self, token: str | None) -> str | None:
        if not token:
            return None
        with self._lock:
            return self._clients.get(_digest(token))

    # -- streams (SSF 1.0 §8.1.1) -----------------------------------------------------------

    def _config(self, stream_id: str, owner: str | None) -> tuple[dict[str, Any], str]:
        found = self.store.stream(stream_id)
        if found is None or (owner is not None and found[0] != owner):
            raise StreamError(f"no stream {stream_id!r}", 404)
        return found[1], found[2]

    def _validated(self, body: Mapping[str, Any], stream_id: str) -> dict[str, Any]:
        delivery = body.get("delivery") or {"method": POLL}
        if not isinstance(delivery, Mapping):
            raise StreamError("delivery must be an object with a method (SSF 1.0 §8.1.1)")
        method = delivery.get("method")
        if method not in (PUSH, POLL):
            raise StreamError(f"delivery method must be {PUSH} or {POLL}")
        if method == PUSH and not str(delivery.get("endpoint_url", "")).startswith(
                ("http://", "https://")):
            raise StreamError("push delivery needs an http(s) endpoint_url")
        if method == POLL:
            delivery = {"method": POLL, "endpoint_url": f"{self.issuer}/ssf/poll/{stream_id}"}
        requested = body.get("events_requested") or []
        if not isinstance(requested, list) or not all(isinstance(e, str) for e in requested):
            raise StreamError("events_requested must be a list of event-type URIs")
        aud = body.get("aud")
        if aud is not None and not (isinstance(aud, str) or (
                isinstance(aud, list) and all(isinstance(a, str) for a in aud))):
            raise StreamError("aud must be a string or a list of strings")
        return {
            "stream_id": stream_id, "iss": self.issuer, "aud": aud or stream_id,
            "delivery": dict(delivery), "events_supported": SUPPORTED,
            "events_requested": requested,
            "events_delivered": [e for e in requested if e in SUPPORTED],
            "description": str(body.get("description", "")),
            "min_verification_interval": 0,
        }

    def create_stream(self, owner: str, body: Mapping[str, Any]) -> dict[str, Any]:
        stream_id = secrets.token_urlsafe(12)
        config = self._validated(body, stream_id)
        self.store.put_stream(stream_id, owner, config)
        if config["delivery"]["method"] == PUSH:
            self._start_worker(stream_id)
        return self._public(config)

    def update_stream(self, owner: str, body: Mapping[str, Any],
                      replace: bool = False) -> dict[str, Any]:
        stream_id = str(body.get("stream_id", ""))
        current, _ = self._config(stream_id, owner)
        merged = dict(body) if replace else {**current, **body}
        config = self._validated(merged, stream_id)
        self.store.put_stream(stream_id, owner, config)
        self._wake(stream_id)
        return self._public(config)

    def get_streams(self, owner: str, stream_id: str | None) -> Any:
        if stream_id:
            return self._public(self._config(stream_id, owner)[0])
        return [self._public(c) for _, c, _ in self.store.streams(owner)]

    def delete_stream(self, owner: str, stream_id: str) -> None:
        self._config(stream_id, owner)
        self.store.delete_stream(stream_id)
        with self._lock:
            worker = self._workers.pop(stream_id, None)
        if worker is not None:
            worker.stop()

    def status(self, owner: str, stream_id: str) -> dict[str, Any]:
        self._config(stream_id, owner)
        found = self.store.stream(stream_id)
        assert found is not None
        out = {"stream_id": stream_id, "status": found[2]}
        if found[3]:
            out["reason"] = found[3]
        return out

    def set_status(self, owner: str, stream_id: str, status: str,
                   reason: str | None = None) -> dict[str, Any]:
        if status not in STATUSES:
            raise StreamError(f"status must be one of {', '.join(STATUSES)}")
        self._config(stream_id, owner)
        self.store.set_status(stream_id, status, reason)
        self._wake(stream_id)
        return self.status(owner, stream_id)

    def verify(self, owner: str, stream_id: str, state: str | None) -> None:
        """SSF §8.1.4: send a verification event on the stream."""
        config, status = self._config(stream_id, owner)
        if status == "disabled":
            raise StreamError("the stream is disabled")
        event = {"state": state} if state else {}
        self.outbox.write([self._new_set(stream_id, config, VERIFICATION, event,
                                         {"format": "opaque", "id": stream_id}, txn=None)])

    @staticmethod
    def _public(config: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(config)
        delivery = dict(out["delivery"])
        if "authorization_header" in delivery:
            delivery["authorization_header"] = "(set)"  # never echoed back
        out["delivery"] = delivery
        return out

    # -- events -----------------------------------------------------------------------------

    def publish(self, event_type: str, event: Mapping[str, Any], subject: Mapping[str, Any], *,
                txn: str | None = None, event_id: str | None = None) -> list[str]:
        """Enqueue one SET per stream that asked for `event_type`; returns their jtis.
        `event_id` (the bus event this reports) makes them findable with `sets_for`.
        A CAEP payload must hold the claims CAEP 1.0 requires (`caep.check`, else
        `caep.CaepEventError`); `caep`'s builders make such payloads."""
        event = caep.check(event_type, event)
        sets = [self._new_set(stream_id, config, event_type, event, subject, txn, event_id)
                for stream_id, config, status in self.store.streams()
                if status != "disabled" and event_type in config["events_delivered"]]
        if sets:  # one event's SETs for every stream: committed together
            self.outbox.write(sets)
        return [s.jti for s in sets]

    def sets_for(self, event_id: str) -> list[tuple[str, str]]:
        """(stream id, SET jti) of each SET issued for the bus event `event_id`, in the order
        they were issued; empty when the event was not a SET type or no stream wanted it.
        Read from the durable store, so it survives a restart."""
        return self.store.sets_for(event_id)

    def _new_set(self, stream_id: str, config: Mapping[str, Any], event_type: str,
                 event: Mapping[str, Any], subject: Mapping[str, Any], txn: str | None,
                 event_id: str | None = None) -> NewSet:
        claims = self.signer.claims(audience=config["aud"], event_type=event_type, event=event,
                                    subject=subject, txn=txn)
        return NewSet(stream_id, str(claims["jti"]), event_type, claims, event_id)

    def on_bus_event(self, event: SecurityEvent) -> None:
        try:
            self._transmit(event)
        finally:  # the decision's own SET goes out first, then any revocation it triggers
            self.detector.observe(event)

    def _transmit(self, event: SecurityEvent) -> None:
        set_type = FOR_BUS_EVENT.get(event.type)
        if set_type is None:
            return
        wire = event.to_dict()
        payload = {"event_timestamp": int(self._clock()), "bus_event_id": event.event_id}
        for key in ("toolName", "tier", "rarType", "rarSummary", "outcome", "reason",
                    "durationMs", "spiffeId", "oboTokenExpiresIn", "correlation", "policyId",
                    "userEmail"):
            if key in wire:
                payload[key] = wire[key]
        if event.type == "caep:session_revoked":
            payload = caep.session_revoked(
                reason_admin=event.reason or "session revoked", at=self._clock(),
                reason_user="Your session was ended by a security policy.")
        elif event.type == "vault:rotation_retry":
            self._credential_changed(event, wire)
            return
        subject: dict[str, Any] = {"format": "complex"}
        if event.session_id:
            subject["session"] = {"format": "opaque", "id": event.session_id}
        if event.user_email:
            subject["user"] = {"format": "email", "email": event.user_email}
        if len(subject) == 1:
            subject = {"format": "uri", "uri": event.spiffe_id or self.issuer}
        self.publish(set_type, payload, subject, txn=event.call_id, event_id=event.event_id)

    def _credential_changed(self, event: SecurityEvent, wire: Mapping[str, Any]) -> None:
        """The MCP server found its Vault-held Verify client secret stale (rotated by another
        use) and re-read it: CAEP credential-change, `update`, about that client. Rare by
        construction (only a stale secret triggers it), so not a per-call SET."""
        client_id = wire.get("clientId")
        subject = ({"format": "opaque", "id": str(client_id)} if client_id else
                   {"format": "uri", "uri": event.spiffe_id or self.issuer})
        payload = caep.credential_change(
            "client-secret", "update", initiating_entity="system", at=self._clock(),
            friendly_name="Verify client secret of the MCP server (held in Vault)",
            reason_admin=f"client secret version {wire.get('staleVersion', '?')} was stale; "
                         "the current version was read from Vault and the call retried")
        self.publish(CAEP["credential-change"], payload, subject, txn=event.call_id,
                     event_id=event.event_id)

    def revoke_session(self, sid: str, email: str | None, reason: str) -> None:
        """Revoke a user session everywhere: a CAEP session-revoked SET to every subscriber."""
        self.revocations[sid] = {"emitted_at": time.time()}
        while len(self.revocations) > REVOCATIONS_KEPT:  # dicts keep insertion order
            del self.revocations[next(iter(self.revocations))]
        if self.events is not None:
            self.events.emit("caep:session_revoked", outcome="denied", reason=reason,
                             session_id=sid, user_email=email, duration_ms=0)
            self.events.emit("agent:session_killed", outcome="denied", reason=reason,
                             session_id=sid, user_email=email, duration_ms=0)
        else:
            self.publish(CAEP["session-revoked"],
                caep.session_revoked(reason_admin=reason, at=self._clock()),
                {"format": "complex", "session": {"format": "opaque", "id": sid},
                 **({"user": {"format": "email", "email": email}} if email else {})})

    # -- delivery ---------------------------------------------------------------------------

    def _start_worker(self, stream_id: str) -> None:
        def current() -> tuple[dict[str, Any], str] | None:
            found = self.store.stream(stream_id)
            return None if found is None else (found[1], found[2])

        worker = PushWorker(stream_id, self.store, sign=self.signer.sign, config=current,
                            on_delivered=self._delivered)
        with self._lock:
            self._workers[stream_id] = worker
        worker.start()

    def _delivered(self, row: OutboxRow) -> None:
        if row.event_type == CAEP["session-revoked"]:
            sid = row.claims.get("sub_id", {}).get("session", {}).get("id")
            if sid in self.revocations:
                self.revocations[sid].setdefault("first_delivered_at", time.time())

    def _wake(self, stream_id: str) -> None:
        self._committed({stream_id})

    def _committed(self, stream_ids: set[str]) -> None:
        """New SETs (or a changed status) on these streams: their workers and pollers look."""
        with self._lock:
            workers = [self._workers[s] for s in stream_ids if s in self._workers]
        for worker in workers:
            worker.wake()
        with self._poll_waiters:
            self._poll_waiters.notify_all()

    def poll(self, owner: str, stream_id: str, *, max_events: int, ack: list[str],
             return_immediately: bool, wait: float = 5.0) -> dict[str, Any]:
        """RFC 8936 §2.4: acknowledge `ack`, then hand out up to `max_events` pending SETs."""
        config, status = self._config(stream_id, owner)
        if config["delivery"]["method"] != POLL:
            raise StreamError("this stream is delivered by push, not poll")
        if ack:
            self.store.acknowledge(stream_id, ack)
        deadline = time.monotonic() + (0 if return_immediately else wait)
        while True:
            rows = self.store.pending(stream_id, max_events + 1) if status == "enabled" else []
            if rows or time.monotonic() >= deadline:
                break
            with self._poll_waiters:
                self._poll_waiters.wait(max(0.0, deadline - time.monotonic()))
            status = self._config(stream_id, owner)[1]
        sets = {r.jti: self.signer.sign(r.claims) for r in rows[:max_events]}
        return {"sets": sets, "moreAvailable": len(rows) > max_events}

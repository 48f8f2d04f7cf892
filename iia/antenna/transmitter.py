"""Antenna, the SSF 1.0 transmitter: streams, SETs for every decision, durable delivery.

Every decision on the event bus becomes one SET (`event_types.FOR_BUS_EVENT`), enqueued in the
SQLite outbox of each stream that asked for its type and is not disabled, then pushed (RFC 8935)
by the stream's worker or handed out on poll (RFC 8936). The emitting thread only builds the
claims and queues one event's SETs in the outbox (`outbox.OutboxWriter`), whose one writer at a
time commits what concurrent emitters gathered in one transaction and returns to each once its
SETs are on disk (group commit); signing and pushing happen in the stream's worker, off the call
path. Management clients authenticate with a bearer token: an access token the IdP issued to
the receiver's client for Antenna (`management`, iia/antenna/management.py), or one Antenna issued
in-process (`register_client`; only digests kept, in the store, so they outlive a restart). Stream
updates follow SSF 1.0 §8.1.1 (`update_stream`); each stream's SETs are signed with the algorithm
it chose (`set_signing_alg`: ES256 by default, or RS256). The anomaly detector watches the same bus
and revokes sessions through CAEP.
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
from iia.antenna.management import OWNER_PREFIX, OAuthManagement
from iia.antenna.outbox import OutboxWriter
from iia.antenna.sets import ALGORITHMS, DEFAULT_ALG, SetSigner
from iia.antenna.store import NewSet, OutboxRow, Store
from iia.errors import IIAError
from iia.events import EventBus, SecurityEvent
from iia.settings import AntennaBounds

__all__ = ["POLL", "PUSH", "Antenna", "StreamError"]

PUSH = "urn:ietf:rfc:8935"
POLL = "urn:ietf:rfc:8936"
STATUSES = ("enabled", "paused", "disabled")
REVOCATIONS_KEPT = 1000
MASKED = "(set)"  # what GET shows of a push stream's authorization_header
RECEIVER_SUPPLIED = ("delivery", "events_requested", "description", "set_signing_alg")


class StreamError(IIAError, code="invalid_request", status=400):
    """A management request Antenna refuses; `status` is the HTTP status (SSF §8.1)."""

    def __init__(self, description: str, status: int = 400) -> None:
        super().__init__(description, status=status)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Antenna:
    def __init__(self, issuer: str, store: Path | str, *, events: EventBus | None = None,
                 rules: AnomalyRules | None = None, management: OAuthManagement | None = None,
                 poll_wait: float = 5.0, clock: Callable[[], float] = time.time,
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
        self.management = management  # IdP-issued management tokens (None: in-process only)
        self.poll_wait = poll_wait  # the longest a long poll (returnImmediately false) waits
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
        """Issue a management bearer token for `name` (returned once, kept as a digest in the
        store, so it still works after a restart)."""
        if name.startswith(OWNER_PREFIX):
            raise StreamError(f"{OWNER_PREFIX}* names the IdP's clients")
        token = secrets.token_urlsafe(32)
        self.store.add_client(_digest(token), name)
        return token

    def client(self, token: str | None) -> str | None:
        """Who `token` manages streams for: a client of `register_client`, or `oauth:<id>`
        for an access token the IdP issued to its client (`management`); None: nobody.
        Raises ManagementUnavailable when the IdP's keys cannot be fetched."""
        if not token:
            return None
        name = self.store.client(_digest(token))
        if name is not None:
            return name
        if self.management is not None and token.count(".") == 2:
            return self.management.owner(token)
        return None

    # -- streams (SSF 1.0 §8.1.1) -----------------------------------------------------------

    def _config(self, stream_id: str, owner: str | None) -> tuple[dict[str, Any], str]:
        found = self.store.stream(stream_id) if stream_id else None
        if found is None or (owner is not None and found[0] != owner):
            raise StreamError(f"no stream {stream_id!r}", 404)
        return found[1], found[2]

    def _validated(self, body: Mapping[str, Any], stream_id: str,
                   current: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The stream's configuration from the receiver-supplied fields of `body` (SSF 1.0
        §8.1.1: `delivery`, `events_requested`, `description`, and this transmitter's
        `set_signing_alg`); `aud` only when the stream is made (`current` None). A
        transmitter-supplied field in `body` must say what the stream has (or will have):
        else 400 with the reason, and nothing changes."""
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
        alg = body.get("set_signing_alg", DEFAULT_ALG)
        if alg not in ALGORITHMS:
            raise StreamError(f"set_signing_alg must be one of {', '.join(ALGORITHMS)}")
        if current is None:
            aud = body.get("aud")
            if aud is not None and not ((isinstance(aud, str) and aud) or (
                    isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud))):
                raise StreamError("aud must be a string or a list of strings")
        else:
            aud = current["aud"]
        config = {
            "stream_id": stream_id, "iss": self.issuer, "aud": aud or stream_id,
            "delivery": dict(delivery), "events_supported": SUPPORTED,
            "events_requested": requested,
            "events_delivered": [e for e in dict.fromkeys(requested) if e in SUPPORTED],
            "description": str(body.get("description", "")),
            "min_verification_interval": 0, "set_signing_alg": alg,
        }
        self._unchanged(body, config, current)
        return config

    @staticmethod
    def _unchanged(body: Mapping[str, Any], config: Mapping[str, Any],
                   current: Mapping[str, Any] | None) -> None:
        """SSF 1.0 §8.1.1: the receiver cannot set transmitter-supplied fields; one it sends
        (a copy of the configuration it read, say) must hold the stream's value."""
        if "iss" in body and body["iss"] != config["iss"]:
            raise StreamError(f"iss is {config['iss']!r}, this transmitter; it cannot be "
                              f"set to {body['iss']!r}")
        if current is not None and "aud" in body and body["aud"] != current["aud"]:
            raise StreamError("aud cannot be changed once the stream exists (SSF 1.0 §8.1.1)")
        for name in ("events_delivered", "events_supported"):
            if name in body and (not isinstance(body[name], list) or
                                 set(map(str, body[name])) != set(config[name])):
                raise StreamError(f"{name} must be {config[name]} (events_delivered is "
                                  "events_requested ∩ events_supported); the transmitter "
                                  "sets it")
        if "min_verification_interval" in body and \
                body["min_verification_interval"] != config["min_verification_interval"]:
            raise StreamError("min_verification_interval is set by the transmitter")

    def create_stream(self, owner: str, body: Mapping[str, Any]) -> dict[str, Any]:
        if "stream_id" in body:
            raise StreamError("stream_id is assigned by the transmitter (SSF 1.0 §8.1.1.1)")
        stream_id = secrets.token_urlsafe(12)
        config = self._validated(body, stream_id)
        self.store.put_stream(stream_id, owner, config)
        if config["delivery"]["method"] == PUSH:
            self._start_worker(stream_id)
        return self._public(config)

    def update_stream(self, owner: str, body: Mapping[str, Any],
                      replace: bool = False) -> dict[str, Any]:
        """PATCH (§8.1.1.3): the receiver-supplied fields given replace theirs, the others
        stay; PUT (§8.1.1.4, `replace`): the receiver-supplied fields are the body's, absent
        ones back to their defaults. Neither changes `stream_id`, `iss` or `aud`."""
        stream_id = body.get("stream_id")
        if not isinstance(stream_id, str) or not stream_id:
            raise StreamError("stream_id is required")
        current, _ = self._config(stream_id, owner)
        if replace:
            merged = dict(body)
            if "delivery" not in body:
                raise StreamError("PUT replaces the whole configuration: delivery is required "
                                  "(SSF 1.0 §8.1.1.4)")
        else:
            merged = {**{k: current[k] for k in RECEIVER_SUPPLIED if k in current}, **body}
        delivery = merged.get("delivery")
        if isinstance(delivery, Mapping) and delivery.get("authorization_header") == MASKED and \
                "authorization_header" in current["delivery"]:  # a GET's copy sent back
            merged["delivery"] = {**delivery, "authorization_header":
                                  current["delivery"]["authorization_header"]}
        config = self._validated(merged, stream_id, current)
        method = config["delivery"]["method"]
        if method != current["delivery"]["method"]:
            raise StreamError("the delivery method of a stream cannot be changed; create "
                              "another stream")
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
        out: dict[str, Any] = {"stream_id": stream_id, "status": found[2]}
        if found[3]:
            out["reason"] = found[3]
        failures = self.store.failures(stream_id)
        if failures:  # what the receiver refused (setErrs, a push's 400), newest first
            out["set_errors"] = [{"jti": jti, "error": why} for jti, why in failures]
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
            delivery["authorization_header"] = MASKED  # never echoed back
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

        def sign(claims: dict[str, Any]) -> str:
            found = self.store.stream(stream_id)
            alg = found[1].get("set_signing_alg", DEFAULT_ALG) if found else DEFAULT_ALG
            return self.signer.sign(claims, alg=alg)

        worker = PushWorker(stream_id, self.store, sign=sign, config=current,
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
             return_immediately: bool, set_errors: Mapping[str, str] | None = None,
             wait: float | None = None) -> dict[str, Any]:
        """RFC 8936 §2.4: acknowledge `ack` and record `set_errors` (jti -> "err: why": those
        SETs failed; jtis this stream has not pending are ignored, as the RFC has no error for
        them), then hand out up to `max_events` pending SETs; with `return_immediately` false
        (the RFC's default) wait for one, at most `wait` seconds (`poll_wait`). `max_events` 0
        only acknowledges."""
        config, status = self._config(stream_id, owner)
        if config["delivery"]["method"] != POLL:
            raise StreamError("this stream is delivered by push, not poll")
        if ack:
            self.store.acknowledge(stream_id, ack)
        if set_errors:
            self.store.refused(stream_id, dict(set_errors))
        if max_events == 0:
            return {"sets": {}, "moreAvailable": bool(self.store.pending(stream_id, 1))}
        wait = self.poll_wait if wait is None else wait
        deadline = time.monotonic() + (0 if return_immediately else wait)
        while True:
            rows = self.store.pending(stream_id, max_events + 1) if status == "enabled" else []
            if rows or time.monotonic() >= deadline:
                break
            with self._poll_waiters:
                self._poll_waiters.wait(max(0.0, deadline - time.monotonic()))
            status = self._config(stream_id, owner)[1]
        alg = config.get("set_signing_alg", DEFAULT_ALG)
        sets = {r.jti: self.signer.sign(r.claims, alg=alg) for r in rows[:max_events]}
        return {"sets": sets, "moreAvailable": len(rows) > max_events}

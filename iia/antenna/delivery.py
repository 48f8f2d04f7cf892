"""Push delivery (RFC 8935), one worker thread per stream.

Each worker sends its stream's due SETs in order, signing each as it sends it (the call path
never signs). 202 (or 200) means delivered; the SETs one pass delivered are marked so in one
transaction at its end (a crash before that mark sends them again: at least once, and the
receiver acts on a jti once). A 400 is the
receiver refusing that SET (RFC 8935 §2.3 `err`): it is marked failed and not retried. Anything
else (connection refused, timeout, 401/403, 5xx) is transient: the SET is retried after
0.25 s, 0.5 s, then every 1 s for as long as it fails (`backoff`; jitter only shortens a wait), so
a returning receiver gets it, and a revocation, within a second; the load on a receiver that is
down stays one request a second per stream. Order is strict FIFO per stream: the worker stops the
batch at the failing SET, and nothing behind it is sent until it is (`Store.due` returns nothing
while the head waits), across restarts too (the outbox is SQLite). A receiver that fails only
delays its own stream: workers share nothing but the store.
A fault inside the worker itself (a store error, a signing failure) is logged and retried after
a pause; it never kills the thread, so a stream cannot silently stop delivering.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from iia.antenna.store import OutboxRow, Store

__all__ = ["PushWorker", "backoff"]

log = logging.getLogger(__name__)
FAULT_PAUSE = 1.0  # seconds a worker waits after a fault of its own before trying again


RETRY_CAP = 1.0  # seconds: the longest a waiting head waits before its next try


def backoff(attempts: int) -> float:
    """Seconds before retry `attempts` + 1: 0.25, 0.5, then 1 s, less up to 20 % jitter."""
    return min(RETRY_CAP, 0.25 * 2.0 ** attempts) * random.uniform(0.8, 1.0)  # noqa: S311


class PushWorker:
    def __init__(self, stream_id: str, store: Store, *, sign: Callable[[dict[str, Any]], str],
                 config: Callable[[], tuple[dict[str, Any], str] | None],
                 on_delivered: Callable[[OutboxRow], None] | None = None,
                 timeout: float = 5.0) -> None:
        self.stream_id = stream_id
        self.store = store
        self._sign = sign
        self._config = config
        self._on_delivered = on_delivered
        self._wake = threading.Condition()
        self._stopped = False
        self._http = httpx.Client(timeout=timeout)
        self.faults = 0  # instrumentation for tests: the worker's own faults survived
        self._thread = threading.Thread(target=self._run, name=f"antenna-push-{stream_id}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        with self._wake:
            self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._thread.join(timeout=10)
        self._http.close()

    def _run(self) -> None:
        while True:
            with self._wake:
                if self._stopped:
                    return
            try:
                wait = self._step()
            except Exception:  # keep delivering; the fault is logged
                self.faults += 1
                log.exception("antenna: push worker for stream %s failed; retrying in %.1f s",
                              self.stream_id, FAULT_PAUSE)
                wait = FAULT_PAUSE
            if wait is None:
                return  # the stream was deleted
            with self._wake:
                if self._stopped:
                    return
                if wait > 0:
                    self._wake.wait(wait)

    def _step(self) -> float | None:
        """Deliver what is due; return how long to sleep (None: the stream is gone)."""
        current = self._config()
        if current is None:
            return None
        config, status = current
        if status == "enabled":
            self._drain(config)
        next_at = self.store.next_due_at(self.stream_id)
        if next_at is None or status != "enabled":
            return 5.0
        return max(0.0, min(5.0, next_at - time.time()))

    def _drain(self, config: dict[str, Any]) -> None:
        delivery = config["delivery"]
        headers = {"Content-Type": "application/secevent+jwt", "Accept": "application/json"}
        if delivery.get("authorization_header"):
            headers["Authorization"] = delivery["authorization_header"]
        sent: list[OutboxRow] = []
        try:
            self._send_due(delivery["endpoint_url"], headers, sent)
        finally:  # one transaction marks the drain's deliveries (a crash before it: resent)
            self.store.delivered(*(row.id for row in sent))

    def _send_due(self, url: str, headers: dict[str, str], sent: list[OutboxRow]) -> None:
        for row in self.store.due(self.stream_id):
            if self._stopped:
                return
            try:
                response = self._http.post(url, content=self._sign(row.claims), headers=headers)
            except httpx.HTTPError as exc:
                self.store.retry_later(row.id, backoff(row.attempts), exc.__class__.__name__)
                return
            if response.status_code in (200, 202):
                sent.append(row)
                if self._on_delivered is not None:
                    self._on_delivered(row)
            elif response.status_code == 400:
                try:
                    body = response.json()
                except ValueError:
                    body = {}
                if not isinstance(body, dict):
                    body = {}
                self.store.failed(row.id, f"{body.get('err', 'invalid_request')}: "
                                          f"{body.get('description', '')}")
            else:
                self.store.retry_later(row.id, backoff(row.attempts),
                                       f"HTTP {response.status_code}")
                return

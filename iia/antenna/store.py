"""Antenna's durable state in SQLite: streams (SSF 1.0 §8.1.1 configurations, their status and
their owner) and the outbox of SETs to deliver.

Antenna writes SETs through one writer at a time, in batches, one transaction each
(`outbox.OutboxWriter`, group commit). The outbox keeps the SET's *claims*, not the signed
token: a SET is signed when it is sent (with the same `jti` on every attempt), so nothing
token-shaped rests on disk. Rows move
pending -> delivered (or failed: refused by the receiver; dropped: the stream was disabled).
`sets_by_event` indexes every SET issued by the bus event it came from (the event's `eventId`),
so an audit record joins the SETs that told the world about it (`sets_for`).
Bounded (issue #20): rows that reached an end (delivered, failed, dropped) are kept
`keep_seconds` (default 3600) and at most `keep_rows` of them (default 2000, all streams
together), newest first; older ones are deleted with their `sets_by_event` entries every
`PRUNE_EVERY` ends, so the file stops growing (SQLite reuses the freed pages). Pending rows are
never pruned: delivery is at least once. History lives in the durable audit trail
(iia.audit_trail), not here.
The database holds stream configurations (a push endpoint's Authorization header among them) and
who-did-what claims, so it is created readable by its owner only (0600; SQLite gives its WAL and
shared-memory files the same mode).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["NewSet", "OutboxRow", "Store"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    stream_id TEXT PRIMARY KEY, owner TEXT NOT NULL, config TEXT NOT NULL,
    status TEXT NOT NULL, reason TEXT, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, stream_id TEXT NOT NULL, jti TEXT NOT NULL,
    event_type TEXT NOT NULL, claims TEXT NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL, created_at REAL NOT NULL,
    delivered_at REAL, last_error TEXT);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (stream_id, state, next_at, id);
CREATE TABLE IF NOT EXISTS sets_by_event (
    event_id TEXT NOT NULL, stream_id TEXT NOT NULL, jti TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS sets_by_event_id ON sets_by_event (event_id);
CREATE INDEX IF NOT EXISTS sets_by_event_set ON sets_by_event (stream_id, jti);
CREATE INDEX IF NOT EXISTS outbox_ended ON outbox (state, id);
CREATE TABLE IF NOT EXISTS clients (digest TEXT PRIMARY KEY, name TEXT NOT NULL);
"""
MAX_CLIENTS = 1000  # in-process management clients kept (the oldest go first)
ERROR_TEXT = 300  # characters of a receiver's setErrs description kept

KEEP_SECONDS = 3600.0  # a delivered SET is kept an hour ...
KEEP_ROWS = 2000  # ... and at most this many ended rows (delivered, failed, dropped)
PRUNE_EVERY = 100  # ended rows between two prunes
ENDED = ("delivered", "failed", "dropped")


@dataclass(frozen=True, slots=True)
class NewSet:
    """A SET to queue: its claims (signed only when sent), and the bus event it reports."""

    stream_id: str
    jti: str
    event_type: str
    claims: dict[str, Any]
    event_id: str | None = None


@dataclass(frozen=True)
class OutboxRow:
    id: int
    stream_id: str
    jti: str
    event_type: str
    claims: dict[str, Any]
    attempts: int
    created_at: float


class Store:
    def __init__(self, path: Path | str, clock: Callable[[], float] = time.time, *,
                 keep_seconds: float = KEEP_SECONDS, keep_rows: int = KEEP_ROWS) -> None:
        if keep_seconds <= 0 or keep_rows < 1:
            raise ValueError("keep_seconds must be positive and keep_rows at least 1")
        self._clock = clock
        self.keep_seconds, self.keep_rows = keep_seconds, keep_rows
        self._ended_since_prune = 0
        self._lock = threading.RLock()
        if str(path) != ":memory:":
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
            os.chmod(path, 0o600)  # an existing file keeps no wider mode either
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        # Stream configurations, parsed, for the per-event path: every bus event asks which
        # streams want it. Refilled from the table after any change to it. Callers must not
        # mutate the dicts they are given.
        self._streams: dict[str, tuple[str, dict[str, Any], str, str | None]] | None = None

    def _stream_cache(self) -> dict[str, tuple[str, dict[str, Any], str, str | None]]:
        with self._lock:
            if self._streams is None:
                rows = self._db.execute("SELECT stream_id, owner, config, status, reason FROM "
                                        "streams ORDER BY created_at").fetchall()
                self._streams = {r[0]: (r[1], json.loads(r[2]), r[3], r[4]) for r in rows}
            return self._streams

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- streams ----------------------------------------------------------------------------

    def put_stream(self, stream_id: str, owner: str, config: dict[str, Any],
                   status: str = "enabled") -> None:
        with self._tx() as db:
            db.execute("INSERT INTO streams VALUES (?, ?, ?, ?, NULL, ?) ON CONFLICT(stream_id) "
                       "DO UPDATE SET config = excluded.config",
                       (stream_id, owner, json.dumps(config), status, self._clock()))
            self._streams = None

    def stream(self, stream_id: str) -> tuple[str, dict[str, Any], str, str | None] | None:
        return self._stream_cache().get(stream_id)

    def streams(self, owner: str | None = None) -> list[tuple[str, dict[str, Any], str]]:
        return [(stream_id, config, status) for stream_id, (who, config, status, _)
                in self._stream_cache().items() if owner is None or who == owner]

    def set_status(self, stream_id: str, status: str, reason: str | None) -> None:
        with self._tx() as db:
            db.execute("UPDATE streams SET status = ?, reason = ? WHERE stream_id = ?",
                       (status, reason, stream_id))
            self._streams = None
            if status == "disabled":  # SSF §8.1.2: a disabled stream holds nothing
                db.execute("UPDATE outbox SET state = 'dropped' WHERE stream_id = ? AND "
                           "state = 'pending'", (stream_id,))

    def delete_stream(self, stream_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM streams WHERE stream_id = ?", (stream_id,))
            self._streams = None
            db.execute("UPDATE outbox SET state = 'dropped' WHERE stream_id = ? AND "
                       "state = 'pending'", (stream_id,))

    # -- management clients (digests of the tokens Antenna issued in-process) ---------------

    def add_client(self, digest: str, name: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO clients VALUES (?, ?)", (digest, name))
            db.execute("DELETE FROM clients WHERE rowid NOT IN (SELECT rowid FROM clients "
                       "ORDER BY rowid DESC LIMIT ?)", (MAX_CLIENTS,))

    def client(self, digest: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT name FROM clients WHERE digest = ?",
                                   (digest,)).fetchone()
        return None if row is None else str(row[0])

    # -- the outbox -------------------------------------------------------------------------

    def enqueue(self, stream_id: str, jti: str, event_type: str,
                claims: dict[str, Any], event_id: str | None = None) -> None:
        """Queue one SET in its own transaction; `event_id` (the bus event it reports) indexes
        it for `sets_for`. Antenna itself writes through `outbox.OutboxWriter` (`append`)."""
        self.append([NewSet(stream_id, jti, event_type, claims, event_id)])

    def append(self, sets: Sequence[NewSet]) -> None:
        """Queue `sets` pending, in this order (their row ids rise with it: delivery per stream
        follows them), in ONE transaction: all of them are on disk, or none is. A SET whose
        stream was disabled or deleted since it was built is kept as `dropped`, as the
        stream's pending SETs were (a disabled stream holds nothing)."""
        if not sets:
            return
        now = self._clock()
        with self._tx() as db:
            streams = self._stream_cache()
            rows = [(s.stream_id, s.jti, s.event_type, json.dumps(s.claims),
                     "pending" if streams.get(s.stream_id, ("", {}, "disabled"))[2]
                     != "disabled" else "dropped", now, now) for s in sets]
            db.executemany("INSERT INTO outbox (stream_id, jti, event_type, claims, state, "
                           "next_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            db.executemany("INSERT INTO sets_by_event VALUES (?, ?, ?)",
                           [(s.event_id, s.stream_id, s.jti) for s in sets
                            if s.event_id is not None])
        self._ended(sum(1 for r in rows if r[4] == "dropped"))

    def sets_for(self, event_id: str) -> list[tuple[str, str]]:
        """(stream id, SET jti) of every SET issued for the bus event `event_id`."""
        with self._lock:
            rows = self._db.execute("SELECT stream_id, jti FROM sets_by_event WHERE event_id = ? "
                                    "ORDER BY rowid", (event_id,)).fetchall()
        return [(r[0], r[1]) for r in rows]

    def due(self, stream_id: str, limit: int = 50) -> list[OutboxRow]:
        """The stream's pending rows from its head, in order, if the head is due; none while
        the head waits for its retry time. Strict FIFO: a later SET never overtakes a head
        that is waiting (each stream has its own head, so only that stream waits)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, stream_id, jti, event_type, claims, attempts, created_at, next_at "
                "FROM outbox WHERE stream_id = ? AND state = 'pending' ORDER BY id LIMIT ?",
                (stream_id, limit)).fetchall()
        now = self._clock()
        out: list[OutboxRow] = []
        for r in rows:
            if r[7] > now:  # a row waiting for its retry: nothing after it goes first
                break
            out.append(OutboxRow(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6]))
        return out

    def pending(self, stream_id: str, limit: int) -> list[OutboxRow]:
        """Pending rows regardless of their retry time (poll delivery hands them out)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, stream_id, jti, event_type, claims, attempts, created_at FROM outbox "
                "WHERE stream_id = ? AND state = 'pending' ORDER BY id LIMIT ?",
                (stream_id, limit)).fetchall()
        return [OutboxRow(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6]) for r in rows]

    def next_due_at(self, stream_id: str) -> float | None:
        """When the stream's head is due (FIFO: the rows behind it wait for it)."""
        with self._lock:
            row = self._db.execute("SELECT next_at FROM outbox WHERE stream_id = ? AND "
                                   "state = 'pending' ORDER BY id LIMIT 1",
                                   (stream_id,)).fetchone()
        return row[0] if row is not None else None

    def delivered(self, *row_ids: int) -> None:
        """Mark these rows delivered, in one transaction (a push worker marks a drain's worth
        at once; a crash before it means those SETs are sent again: at least once)."""
        if not row_ids:
            return
        now = self._clock()
        with self._tx() as db:
            db.executemany("UPDATE outbox SET state = 'delivered', delivered_at = ?, "
                           "attempts = attempts + 1 WHERE id = ?",
                           [(now, row_id) for row_id in row_ids])
        self._ended(len(row_ids))

    def acknowledge(self, stream_id: str, jtis: list[str]) -> int:
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE outbox SET state = 'delivered', delivered_at = ? WHERE stream_id = ? "  # noqa: S608
                f"AND state = 'pending' AND jti IN ({','.join('?' * len(jtis))})",
                (self._clock(), stream_id, *jtis))
            count = cur.rowcount
        self._ended(count)
        return count

    def refused(self, stream_id: str, errors: dict[str, str]) -> int:
        """RFC 8936 §2.4 `setErrs`: the receiver refused these SETs (jti -> "err: why"); they
        are failed, with the reason kept. Jtis not pending on this stream change nothing."""
        if not errors:
            return 0
        with self._tx() as db:
            n = 0
            for jti, why in errors.items():
                n += db.execute("UPDATE outbox SET state = 'failed', last_error = ? WHERE "
                                "stream_id = ? AND state = 'pending' AND jti = ?",
                                (why[:ERROR_TEXT], stream_id, jti)).rowcount
        self._ended(n)
        return n

    def failures(self, stream_id: str, limit: int = 20) -> list[tuple[str, str]]:
        """(jti, why) of the stream's latest failed SETs, newest first."""
        with self._lock:
            rows = self._db.execute("SELECT jti, last_error FROM outbox WHERE stream_id = ? AND "
                                    "state = 'failed' ORDER BY id DESC LIMIT ?",
                                    (stream_id, limit)).fetchall()
        return [(r[0], r[1] or "") for r in rows]

    def retry_later(self, row_id: int, delay: float, error: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE outbox SET attempts = attempts + 1, next_at = ?, last_error = ? "
                       "WHERE id = ?", (self._clock() + delay, error, row_id))

    def failed(self, row_id: int, error: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE outbox SET state = 'failed', attempts = attempts + 1, "
                       "last_error = ? WHERE id = ?", (error, row_id))
        self._ended(1)

    # -- bounds -----------------------------------------------------------------------------

    def _ended(self, count: int) -> None:
        with self._lock:
            self._ended_since_prune += count
            due = self._ended_since_prune >= PRUNE_EVERY
            if due:
                self._ended_since_prune = 0
        if due:
            self.prune()

    def prune(self) -> int:
        """Delete the ended rows (delivered, failed, dropped) older than `keep_seconds` or
        beyond the newest `keep_rows`, with their `sets_by_event` entries, in one transaction.
        Returns how many rows went. Pending rows stay."""
        cutoff = self._clock() - self.keep_seconds
        marks = ",".join("?" * len(ENDED))
        with self._tx() as db:
            floor = db.execute(
                f"SELECT id FROM outbox WHERE state IN ({marks}) ORDER BY id DESC "  # noqa: S608
                "LIMIT 1 OFFSET ?", (*ENDED, self.keep_rows - 1)).fetchone()
            rows = db.execute(
                f"SELECT id, stream_id, jti FROM outbox WHERE state IN ({marks}) "  # noqa: S608
                "AND (id < ? OR COALESCE(delivered_at, created_at) < ?)",
                (*ENDED, floor[0] if floor is not None else -1, cutoff)).fetchall()
            if rows:
                db.executemany("DELETE FROM sets_by_event WHERE stream_id = ? AND jti = ?",
                               [(r[1], r[2]) for r in rows])
                db.executemany("DELETE FROM outbox WHERE id = ?", [(r[0],) for r in rows])
        return len(rows)

    def size(self) -> dict[str, int]:
        """Rows per table (outbox by state): what a soak or a test reads of the bounds."""
        with self._lock:
            states = self._db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state")
            out = {f"outbox_{state}": int(n) for state, n in states.fetchall()}
            out["sets_by_event"] = int(self._db.execute(
                "SELECT COUNT(*) FROM sets_by_event").fetchone()[0])
        return out

    def counts(self, stream_id: str) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM outbox WHERE stream_id = ? "
                                    "GROUP BY state", (stream_id,)).fetchall()
        return {state: n for state, n in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()

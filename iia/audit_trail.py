"""The durable audit trail: an append-only JSON Lines journal per process, rotated by size.

Each process appends what it owns: the MCP server every security event of the bus (with the SET
jtis Antenna issued for it), the IdP every decision it makes. One file per writer
(`events.jsonl`, `decisions.jsonl`) in one directory (`IIA_AUDIT_DIR`; the lab's is
`<lab dir>/audit/`), so no two processes ever write one file.

Write cost: `append` only queues the record (no I/O on the caller's thread); one writer thread
per journal takes what has gathered, writes it with one `write`, and `fsync`s it, every
`flush_s` (0.25 s by default): a record is on disk within about that long after the decision, a
process killed with SIGKILL loses at most the last quarter second, and a burst costs one fsync
per batch, not per record. Rotation: when the file would grow past `max_bytes` (8 MiB by
default) it is renamed `<name>.1` (the older ones shift up to `<name>.<keep>`, 4 by default, the
oldest is deleted): the trail is bounded at `max_bytes * (keep + 1)` per writer. The queue is
bounded too (`max_pending`): if the disk stops taking writes, records beyond it are counted and
a `{"record": "gap", "dropped": N}` line says so once writing resumes.

No token or secret reaches the file: every record passes through `iia.events.redact` (events
are redacted on the bus already; the IdP's decisions are redacted here). Files are 0600, the
directory 0700.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iia.errors import ConfigurationError
from iia.events import EventBus, SecurityEvent, redact

__all__ = ["DECISIONS", "EVENTS", "AuditJournal", "AuditSettings", "read_records",
           "read_records_newest_first", "record_events"]

EVENTS, DECISIONS = "events.jsonl", "decisions.jsonl"

log = logging.getLogger(__name__)

Enrich = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class AuditSettings:
    """IIA_AUDIT_DIR (none: no durable trail), IIA_AUDIT_MAX_BYTES (8388608: rotate past 8 MiB),
    IIA_AUDIT_KEEP (4 rotated files), IIA_AUDIT_FLUSH_S (0.25: write and fsync each batch)."""

    directory: Path | None = None
    max_bytes: int = 8 * 1024 * 1024
    keep: int = 4
    flush_s: float = 0.25

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AuditSettings:
        def number(name: str, default: float, kind: type[int] | type[float]) -> Any:
            raw = env.get(name)
            if not raw:
                return default
            try:
                value = kind(raw)
            except ValueError:
                value = 0
            if value <= 0:
                raise ConfigurationError(f"{name} must be a positive number, got {raw!r}")
            return value

        raw_dir = env.get("IIA_AUDIT_DIR")
        return cls(directory=Path(raw_dir) if raw_dir else None,
                   max_bytes=number("IIA_AUDIT_MAX_BYTES", cls.max_bytes, int),
                   keep=number("IIA_AUDIT_KEEP", cls.keep, int),
                   flush_s=number("IIA_AUDIT_FLUSH_S", cls.flush_s, float))

    def journal(self, name: str, enrich: Enrich | None = None) -> AuditJournal | None:
        if self.directory is None:
            return None
        return AuditJournal(self.directory / name, max_bytes=self.max_bytes, keep=self.keep,
                            flush_s=self.flush_s, enrich=enrich)


class AuditJournal:
    """Append-only, buffered, size-rotated JSON Lines; `append` never blocks on I/O."""

    def __init__(self, path: Path, *, max_bytes: int = AuditSettings.max_bytes,
                 keep: int = AuditSettings.keep, flush_s: float = AuditSettings.flush_s,
                 enrich: Enrich | None = None, max_pending: int = 100_000) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.flush_s = flush_s
        self.enrich = enrich
        self._max_pending = max_pending
        self._pending: deque[dict[str, Any]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._busy = False
        self.dropped = 0  # records refused because the queue was full (disk not writing)
        self.written = 0
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"audit-{path.name}")
        self._thread.start()

    def append(self, record: Mapping[str, Any]) -> None:
        with self._cond:
            if self._closed:
                return
            if len(self._pending) >= self._max_pending:
                self.dropped += 1
                return
            self._pending.append(dict(record))

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything appended so far is written and fsynced (tests, shutdown)."""
        with self._cond:
            self._cond.notify_all()
            return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    # -- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._pending and not self._closed:
                    self._cond.wait(self.flush_s)
                batch = list(self._pending)
                self._pending.clear()
                dropped, self.dropped = self.dropped, 0
                closing = self._closed
                self._busy = bool(batch or dropped)
            if batch or dropped:
                self._write(batch, dropped)
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
            if closing and not self._pending:
                return

    def _lines(self, batch: list[dict[str, Any]], dropped: int) -> bytes:
        out = []
        if dropped:
            out.append(json.dumps({"record": "gap", "dropped": dropped}))
        for record in batch:
            if self.enrich is not None:
                try:
                    record = self.enrich(record)
                except Exception:  # enrichment is a join key, never a reason to lose a record
                    log.exception("audit trail: enriching a record failed; written without")
            out.append(json.dumps(redact(record), ensure_ascii=False, default=str,
                                  separators=(",", ":")))
        return ("\n".join(out) + "\n").encode()

    def _write(self, batch: list[dict[str, Any]], dropped: int) -> None:
        data = self._lines(batch, dropped)
        try:
            if self._size() + len(data) > self.max_bytes and self._size() > 0:
                self._rotate()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.written += len(batch)
        except OSError as exc:  # lost, but counted: the next batch's gap line says how many
            log.warning("audit trail %s: could not write %d records (%s)", self.path,
                        len(batch), exc.strerror or exc)
            with self._cond:
                self.dropped += len(batch) + dropped

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def _rotate(self) -> None:
        oldest = self.path.with_name(f"{self.path.name}.{self.keep}")
        oldest.unlink(missing_ok=True)
        for n in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.rename(self.path.with_name(f"{self.path.name}.{n + 1}"))
        self.path.rename(self.path.with_name(f"{self.path.name}.1"))


def _files(directory: Path, name: str) -> list[Path]:
    """The journal's files, oldest first (`name.N` ... `name.1`, `name`)."""
    rotated = []
    for path in directory.glob(f"{name}.*"):
        suffix = path.name[len(name) + 1:]
        if suffix.isdigit():
            rotated.append((int(suffix), path))
    return [p for _, p in sorted(rotated, reverse=True)] + [directory / name]


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:  # a line cut short by a crash
        return None
    return value if isinstance(value, dict) else None


def read_records(directory: Path, name: str) -> Iterator[dict[str, Any]]:
    """Every record of one journal, oldest first; a damaged line is skipped."""
    for path in _files(directory, name):
        try:
            with path.open("rb") as handle:
                for line in handle:
                    record = _parse(line)
                    if record is not None:
                        yield record
        except FileNotFoundError:
            continue


def read_records_newest_first(directory: Path, name: str) -> Iterator[dict[str, Any]]:
    """Every record of one journal, newest first (one file in memory at a time)."""
    for path in reversed(_files(directory, name)):
        try:
            lines = path.read_bytes().splitlines()
        except FileNotFoundError:
            continue
        for line in reversed(lines):
            record = _parse(line)
            if record is not None:
                yield record


def record_events(events: EventBus, journal: AuditJournal,
                  sets_for: Callable[[str], list[tuple[str, str]]] | None = None,
                  set_types: Collection[str] = ()) -> Callable[[], None]:
    """Append every event of the bus to `journal` (subscribe after Antenna, so the SETs of an
    event are committed before its record is written); `sets_for` (Antenna's) adds the SET
    jtis issued for an event of one of `set_types`, looked up on the writer thread, off the
    call path. Returns the
    function that stops recording."""

    def enrich(record: dict[str, Any]) -> dict[str, Any]:
        if sets_for is not None and record.get("eventId") and record.get("type") in set_types:
            jtis = [jti for _, jti in sets_for(str(record["eventId"]))]
            if jtis:
                record["setJtis"] = jtis
        return record

    journal.enrich = enrich

    def on_event(event: SecurityEvent) -> None:
        journal.append({"record": "event", **event.to_dict()})

    return events.subscribe(on_event)

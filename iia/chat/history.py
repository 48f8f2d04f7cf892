"""The security panel's history: pages of earlier events, read from the durable audit trail.

    GET /events/history?scope=mine|all&before=ISO-TIME&limit=N
    -> {"events": [...oldest first...], "before": ISO-TIME | null, "durable": bool}

`mine` is the signed-in person's own events (their e-mail, in any of their sessions, also
before a restart of the lab); `all` is everyone's, for tenant administrators only (the route
checks that, as for the live stream). `before` pages back: pass the `before` of one answer to
get the page before it; null when there is nothing earlier. Events that share the boundary
millisecond all land on the same page, so paging never skips one.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from iia.audit_trail import EVENTS, read_records_newest_first

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "HistoryRequestError", "history", "parse_request"]

DEFAULT_LIMIT, MAX_LIMIT = 100, 500


class HistoryRequestError(ValueError):
    """A malformed history request (the route answers 400 invalid_request with it)."""


def parse_request(before: str | None, limit: str | None) -> tuple[datetime | None, int]:
    when = None
    if before:
        try:
            when = datetime.fromisoformat(before)
        except ValueError:
            raise HistoryRequestError(f"before is an ISO time such as 2026-12-02T20:00:00.000Z, "
                                      f"not {before!r}") from None
        if when.tzinfo is None:
            raise HistoryRequestError("before must name its offset (e.g. end in Z)")
    count = DEFAULT_LIMIT
    if limit:
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_LIMIT:
            raise HistoryRequestError(f"limit is a number from 1 to {MAX_LIMIT}")
        count = int(limit)
    return when, count


def _when(record: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(record.get("timestamp")))
    except ValueError:
        return None


def history(directory: Path | None, *, email: str | None, everyone: bool,
            before: datetime | None, limit: int) -> dict[str, Any]:
    """One page of events older than `before`: everyone's, or only `email`'s."""
    if directory is None:
        return {"events": [], "before": None, "durable": False}
    mine = (email or "").lower()
    page: list[dict[str, Any]] = []
    more = False
    for record in read_records_newest_first(directory, EVENTS):
        if record.get("record") != "event":
            continue
        if not everyone and str(record.get("userEmail") or "").lower() != mine:
            continue
        when = _when(record)
        if when is None or (before is not None and when >= before):
            continue
        if len(page) >= limit and when != _when(page[-1]):
            more = True
            break
        event = {k: v for k, v in record.items() if k != "record"}
        page.append(event)
    page.reverse()
    return {"events": page, "before": page[0]["timestamp"] if more and page else None,
            "durable": True}

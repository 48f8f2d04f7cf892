"""A bounded, queryable log: the newest `capacity` items of an append-only sequence, indexed as
the whole sequence is (issue #20, bounded state).

`len(log)` is how many items were ever appended, so a reader can take a marker (`n = len(log)`)
and read what came after it (`log[n:]`), as with a list; negative indices and slices count from
the newest item. An item older than the newest `capacity` is gone: indexing it raises
IndexError, a slice starts at the oldest kept item. History lives on disk (the durable audit
trail, harness.verify.audit_journal); the log is what tests, notebooks and `/lab/...` routes
read now.

Each bound has a default and an environment variable (`capacity_from_env`).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar, overload

__all__ = ["BoundedLog", "capacity_from_env"]

T = TypeVar("T")


def capacity_from_env(name: str, default: int) -> int:
    """The bound named by the environment variable `name`, else `default`; at least 1."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


class BoundedLog(Generic[T]):
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a bounded log holds at least one item")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._items: deque[T] = deque(maxlen=capacity)
        self._total = 0

    def append(self, item: T) -> None:
        with self._lock:
            self._items.append(item)
            self._total += 1

    def __len__(self) -> int:
        """Items ever appended (a marker for `log[marker:]`), not the items kept."""
        with self._lock:
            return self._total

    def kept(self) -> int:
        """Items held now (at most `capacity`)."""
        with self._lock:
            return len(self._items)

    def items(self) -> list[T]:
        """The kept items, oldest first."""
        with self._lock:
            return list(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self.items())

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: int | slice) -> T | list[T]:
        with self._lock:
            items, first = list(self._items), self._total - len(self._items)
            total = self._total
        if isinstance(index, slice):
            start, stop, step = index.indices(total)  # absolute positions in the whole log
            return items[max(start - first, 0):max(stop - first, 0)][::step]
        position = index + total if index < 0 else index
        if not first <= position < total:
            raise IndexError(f"item {index} is not kept (the log keeps the newest "
                             f"{self.capacity} of {total})")
        return items[position - first]

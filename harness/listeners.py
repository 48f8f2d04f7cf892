"""A thread-safe list of callbacks: subscribe returns its own unsubscribe."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, ParamSpec

__all__ = ["Listeners"]

P = ParamSpec("P")


class Listeners(Generic[P]):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Callable[P, None]] = []

    def add(self, listener: Callable[P, None]) -> Callable[[], None]:
        with self._lock:
            self._items.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._items:
                    self._items.remove(listener)

        return remove

    def notify(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Call every listener, outside the lock (a listener may subscribe or unsubscribe)."""
        with self._lock:
            items = list(self._items)
        for listener in items:
            listener(*args, **kwargs)

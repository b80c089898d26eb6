"""Values computed once per process by whichever thread asks first, the others waiting for that result.

The app loads what its pages need first (the backbone, the comparison baselines, the demo features) in a background
thread after the first page has rendered; a page that asks for one of them meanwhile waits for the background work
instead of doing it a second time. A failed computation is forgotten, so the next request retries (and shows its
error to the user).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


class ComputedOnce:
    """A process-wide memo: get(key, compute) runs compute() at most once per key at a time; concurrent callers of
    the same key wait for it and get its result (or its exception). Beyond `max_entries` keys the oldest finished
    ones are forgotten."""

    def __init__(self, max_entries: int = 512) -> None:
        self._futures: dict[Hashable, Future] = {}
        self._lock = threading.Lock()
        self._max_entries = max_entries

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        with self._lock:
            future = self._futures.get(key)
            owner = future is None
            if owner:
                future = self._futures[key] = Future()
                finished = [k for k, f in self._futures.items() if f.done()]
                for old in finished[: max(0, len(self._futures) - self._max_entries)]:
                    del self._futures[old]
        if owner:
            try:
                future.set_result(compute())
            except BaseException as error:  # noqa: BLE001 - handed to every waiter, then forgotten for a retry
                with self._lock:
                    self._futures.pop(key, None)
                future.set_exception(error)
        return future.result()

    def ready(self, key: Hashable) -> bool:
        """Whether `key` has been computed successfully (get would return at once)."""
        with self._lock:
            future = self._futures.get(key)
        return future is not None and future.done() and future.exception() is None

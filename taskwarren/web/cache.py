"""Values read at most every so often, served stale while a thread reads the next."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Generic, TypeVar

__all__ = ["Cached"]

T = TypeVar("T")


class Cached(Generic[T]):
    """A value read at most every ``ttl_s`` seconds; once one is known, a stale one is
    served while ``executor`` reads the next (``ttl_s`` 0: read each time). A failed read
    gives ``None`` and what ``describe`` says of the exception.

    Args:
        load: reads the value.
        ttl_s: how long a value is fresh.
        executor: where stale values are read again.
        describe: one line for the page about a read that failed.
    """

    def __init__(self, load: Callable[[], T], ttl_s: float, executor: Executor,
                 describe: Callable[[BaseException], str]) -> None:
        self._load = load
        self._describe = describe
        self.ttl_s = ttl_s
        self._executor = executor
        self._lock = threading.Lock()
        self._value: tuple[float, T | None, str | None] | None = None
        self._refreshing = False

    def get(self) -> tuple[T | None, str | None]:
        """The value (``None`` with a problem if reading it failed) and that problem."""
        with self._lock:
            known = self._value
            fresh = known is not None and time.monotonic() - known[0] < self.ttl_s
            if known is not None and (fresh or self._refreshing):
                return known[1], known[2]
            if known is not None and self.ttl_s > 0:
                self._refreshing = True
                self._executor.submit(self._refresh)
                return known[1], known[2]
        return self._refresh()

    def _refresh(self) -> tuple[T | None, str | None]:
        try:
            value: T | None = self._load()
            problem = None
        except Exception as exc:  # shown on the page, read again next time
            value, problem = None, self._describe(exc)
        with self._lock:
            self._value = (time.monotonic(), value, problem)
            self._refreshing = False
        return value, problem

"""One job-table connection per thread (and per process), opened on first use."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from taskwarren.store.job_table import JobTable

__all__ = ["ThreadTables"]


class ThreadTables:
    """A :class:`JobTable` per thread (and per process: a forked child opens its own),
    opened by ``open_table`` on first use."""

    def __init__(self, open_table: Callable[[], JobTable]) -> None:
        self._open_table = open_table
        self._local = threading.local()
        self._opened: list[JobTable] = []
        self._lock = threading.Lock()

    def get(self) -> JobTable:
        """This thread's table.

        Raises:
            StoreError: the store cannot be reached.
        """
        table: JobTable | None = getattr(self._local, "table", None)
        if table is None or self._local.pid != os.getpid():
            table = self._open_table()
            self._local.table, self._local.pid = table, os.getpid()
            with self._lock:
                self._opened.append(table)
        return table

    def forget(self) -> None:
        """Close this thread's table (after a failure); the next :meth:`get` opens another."""
        table: JobTable | None = getattr(self._local, "table", None)
        self._local.table = None
        if table is not None:
            with self._lock:
                if table in self._opened:
                    self._opened.remove(table)
            table.store.close()

    def close(self) -> None:
        """Close every thread's table."""
        with self._lock:
            opened, self._opened = self._opened, []
        for table in opened:
            table.store.close()
        self._local = threading.local()

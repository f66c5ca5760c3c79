"""Admission of tasks to a child's executor threads: a suspect runs alone.

A suspect (see :class:`~taskwarren.worker.shared.KillRecord`) was running beside
others in a process that died. Run alone, a death is evidence against it: it bars new
tasks, then waits for the running ones to end. With one thread every task runs alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Gate:
    """Admits tasks, one suspect at a time alone.

    Args:
        leaving: whether the child is stopping (a waiting thread then gives up).
        threads: executor threads of the child; with one, every task runs alone
            anyway, and admitting costs nothing.
    """

    def __init__(self, leaving: Callable[[], bool], threads: int = 2) -> None:
        self._leaving = leaving
        self._single = threads == 1
        self._cond = threading.Condition()
        self._active = 0  # tasks admitted and not yet released
        self._alone = False  # a suspect runs, or waits to run, alone

    def admit(self, alone: bool) -> bool:
        """Wait until this thread may start a task; False if the child stops meanwhile."""
        if self._single:
            return True
        with self._cond:
            while self._alone:
                if self._leaving():
                    return False
                self._cond.wait(0.1)
            if alone:
                self._alone = True
                while self._active:
                    if self._leaving():
                        self._alone = False
                        self._cond.notify_all()
                        return False
                    self._cond.wait(0.1)
            self._active += 1
            return True

    def try_admit(self, alone: bool) -> bool:
        """Admit a task if it may start now, without waiting (the event loop cannot)."""
        with self._cond:
            if self._alone or (alone and self._active):
                return False
            self._alone = alone
            self._active += 1
            return True

    def release(self, alone: bool) -> None:
        """A task admitted with ``alone`` has ended."""
        if self._single:
            return
        with self._cond:
            self._active -= 1
            if alone:
                self._alone = False
            self._cond.notify_all()

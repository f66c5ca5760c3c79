"""Settlements queued by any thread for a consumer's I/O thread, and the pipe that wakes it.

A consumer's :meth:`~taskwarren.brokers.base.Consumer.settle` and ``wakeup`` run on
executor threads (and ``wakeup`` in signal handlers); only the I/O thread touches the
broker. The I/O thread sleeps in ``poll``/``select`` on :attr:`SettleQueue.fileno`; a
settlement queued while it sleeps, or a wake-up, writes a byte to the pipe. Broker
neutral: the SQLite consumer uses it, and RabbitMQ's consumer keeps the same deque and
pipe of its own.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Iterator

from taskwarren.brokers.base import Action, Delivery


class SettleQueue:
    """A thread-safe queue of settlements with a self-pipe wake-up."""

    def __init__(self) -> None:
        self._items: deque[tuple[Delivery, Action]] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sleeping = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def fileno(self) -> int:
        """The pipe's read end, readable once :meth:`wakeup` was called (``-1`` if closed)."""
        return self._wake_r

    def put(self, delivery: Delivery, action: Action, urgent: bool = True) -> None:
        """Queue a settlement; wake the I/O thread if it sleeps and ``urgent`` is set."""
        self._items.append((delivery, action))
        if urgent and self._sleeping:
            self.wakeup()

    def take(self) -> list[tuple[Delivery, Action]]:
        """Every settlement queued so far, oldest first, removed from the queue."""
        items = self._items
        todo = []
        while items:
            todo.append(items.popleft())
        return todo

    def give_back(self, todo: list[tuple[Delivery, Action]]) -> None:
        """Put settlements that could not be carried out back in front, in order."""
        self._items.extendleft(reversed(todo))

    def wakeup(self) -> None:
        """Make the sleeping I/O thread return soon. Thread-safe, signal-safe."""
        fd = self._wake_w
        if fd < 0:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(fd, b"x")  # a full pipe already holds a wake-up

    @contextlib.contextmanager
    def sleeping(self) -> Iterator[bool]:
        """Mark the I/O thread asleep; yields whether settlements already wait (skip the sleep)."""
        self._sleeping = True
        try:
            yield bool(self._items)
        finally:
            self._sleeping = False

    def drain(self) -> None:
        """Empty the pipe after waking."""
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._wake_r, 4096):
                pass

    def close(self) -> None:
        """Close the pipe; later wake-ups do nothing."""
        wake_r, wake_w = self._wake_r, self._wake_w
        self._wake_r = self._wake_w = -1
        for fd in (wake_r, wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

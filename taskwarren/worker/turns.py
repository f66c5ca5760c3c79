"""The consumer, lent by a worker child's I/O thread to its one idle executor thread.

A delivery handed from the I/O thread to an executor waits for that thread to wake up,
then for the GIL until the I/O thread blocks again: about a quarter of a millisecond
at idle, a fifth of taskwarren's enqueue-to-start latency (benchmarks/README.md). So
with one executor thread (and no event loop), an executor with nothing to do asks for
the consumer; the I/O thread lends it and waits; the executor polls, does the I/O
thread's duties meanwhile, and runs what arrives in its own thread after giving the
consumer back, so that heartbeats, settlements and time limits are the I/O thread's
again while the task runs. One thread at a time touches the consumer: the two locks
order their accesses.

What runs between the socket and the task is kept short: at idle every step costs
several times its tight-loop time (cold caches), so the first delivery polled runs at
once, without a pass through the inbox, and the consumer goes back with one lock
release rather than an ``Event`` (a condition variable, in Python).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence

from taskwarren.brokers.base import Delivery

__all__ = ["Turn"]

#: Longest the I/O thread waits for the consumer back before it looks at its executors.
WAIT_BACK_S = 1.0


class Turn:
    """The consumer's loan: asked for by the executor, lent and awaited by the I/O thread."""

    def __init__(self, inbox: queue.SimpleQueue[Delivery | Turn | None]) -> None:
        self._inbox = inbox
        self._lock = threading.Lock()
        self._asking = False  # the executor is about to wait on an empty inbox
        self._out = threading.Lock()  # held while the consumer is on loan
        self._failure: Exception | None = None  # what the executor's poll raised

    def ask(self) -> bool:
        """Executor, before it waits on its inbox: ask for the consumer if the inbox is
        empty. Whether it asked (the caller then wakes the I/O thread's poll)."""
        with self._lock:
            self._asking = self._inbox.empty()
            return self._asking

    def hand(self, deliveries: Sequence[Delivery]) -> None:
        """Put deliveries in the executor's inbox: it is busy with them, not asking."""
        if not deliveries:
            return
        with self._lock:  # one step with the put: a lend never follows a busy executor
            self._asking = False
            for delivery in deliveries:
                self._inbox.put(delivery)

    def lend(self) -> bool:
        """I/O thread: lend the consumer to an executor asking for it with nothing else
        to do (the loan itself goes through its inbox); whether it did."""
        with self._lock:
            if not self._asking or not self._inbox.empty():
                return False
            if not self._out.acquire(blocking=False):
                return False  # an executor lost with the consumer never gave it back
            self._asking = False
            self._inbox.put(self)
            return True

    def use(self, receive: Callable[[], list[Delivery]], duties: Callable[[], None],
            leaving: Callable[[], bool]) -> Delivery | None:
        """Executor, holding the consumer: poll (``receive``), doing the I/O thread's
        ``duties`` between polls, until deliveries arrive or the child is ``leaving``.

        Returns the first delivery, for this thread to run now that the consumer is
        given back; the others wait in the inbox. ``None`` if none arrived.
        """
        try:
            while not leaving():
                polled = receive()
                if polled:
                    self.hand(polled[1:])  # the I/O thread does its duties if they are due
                    return polled[0]
                duties()
        except Exception as exc:  # the I/O thread's to handle, as if its own poll raised
            self._failure = exc
        finally:
            self.give_back()
        return None

    def give_back(self) -> None:
        """Executor: the consumer is the I/O thread's again."""
        self._out.release()

    def wait_back(self, lost: Callable[[], bool]) -> None:
        """I/O thread: wait for the consumer back, or until ``lost()`` (no executor).

        Raises:
            Exception: what the executor's poll or duties raised, raised here in the
                I/O thread (which then fails as if it had polled itself).
        """
        while not self._out.acquire(timeout=WAIT_BACK_S):
            if lost():
                return
        self._out.release()  # back: not on loan
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

"""The consumer, lent by a worker child's I/O thread to its one idle executor thread.

A delivery handed from the I/O thread to an executor waits for that thread to wake up,
then for the GIL until the I/O thread blocks again: about a quarter of a millisecond
at idle, a fifth of taskwarren's enqueue-to-start latency, and under load the two
threads take turns at the GIL for every batch (benchmarks/README.md). So with one
executor thread (and no event loop), an executor with nothing to do asks for the
consumer; the I/O thread lends it and sleeps; the executor polls, runs what arrives in
its own thread, polls again (which settles what it ran), and does the I/O thread's
duties when they are due: one thread does everything, as a plain py-amqp consumer does.

While a task runs, the consumer is the I/O thread's for the taking: it looks every
:data:`LOOK_S`, and takes the consumer back from a task running
:data:`LONG_TASK_S` or longer (heartbeats, time limits and settlements are then its
own again while the task runs), or at once when the child stops. One thread at a time
touches the consumer: every change of hands is a change of :attr:`Turn.state` under
one lock, made by the thread that holds the consumer or, from a running task, by the
I/O thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence

from taskwarren.brokers.base import Delivery

__all__ = ["HOME", "LONG_TASK_S", "LOOK_S", "POLLING", "RUNNING", "Turn"]

#: Who has the consumer: the I/O thread; the executor, polling; nobody, a task runs.
HOME, POLLING, RUNNING = "home", "polling", "running"
#: How often the I/O thread looks at a loan (and at its executors).
LOOK_S = 0.05
#: A task running this long gets the I/O thread back beside it.
LONG_TASK_S = 0.05


class Turn:
    """The consumer's loan: asked for by the executor, lent and watched by the I/O thread."""

    def __init__(self, inbox: queue.SimpleQueue[Delivery | Turn | None]) -> None:
        self._inbox = inbox
        self._lock = threading.Lock()
        self._asking = False  # the executor is about to wait on an empty inbox
        self.state = HOME
        self._running_since = 0.0
        self._waiting: list[Delivery] = []  # polled on loan, not run yet
        self._ended = threading.Event()  # the executor gave the consumer back itself
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
            if not self._asking or not self._inbox.empty() or self.state != HOME:
                return False
            self._asking = False
            self.state = POLLING
            self._ended.clear()
            self._inbox.put(self)
            return True

    def use(self, receive: Callable[[], list[Delivery]], duties: Callable[[], None],
            run: Callable[[Delivery], bool], leaving: Callable[[], bool]) -> bool:
        """Executor, holding the consumer: poll (``receive``), ``run`` what arrives, and
        do the I/O thread's ``duties`` when due, until the child is ``leaving`` or the
        I/O thread takes the consumer back from a long task. What was polled and not
        run yet then goes to the inbox (before the I/O thread goes on).

        Returns ``run``'s last answer: False if this thread must end (abandoned). What
        ``receive`` or ``duties`` raise ends the loan, for :meth:`wait_back` to raise in
        the I/O thread; what ``run`` raises ends the loan and is raised here.
        """
        try:
            while not leaving():
                with self._lock:
                    delivery = self._waiting.pop(0) if self._waiting else None
                    if delivery is not None:
                        self.state, self._running_since = RUNNING, time.monotonic()
                if delivery is None:
                    try:
                        duties()  # when due: after what was run, never before a task
                        polled = receive()
                    except Exception as exc:  # the I/O thread's, as if its own poll raised
                        self._failure = exc
                        return True
                    with self._lock:
                        self._waiting = polled
                    continue
                try:  # what run raises ends this thread (its caller's to report)
                    if not run(delivery):
                        return False
                finally:
                    with self._lock:  # the consumer again, unless taken back meanwhile
                        mine = self.state == RUNNING
                        if mine:
                            self.state = POLLING
                if not mine:
                    return True
        finally:
            with self._lock:
                if self.state != HOME:
                    self._home()
                    self._ended.set()
        return True

    def _home(self) -> None:
        """Under the lock: the consumer is the I/O thread's; what the executor polled and
        has not run goes to the inbox."""
        self.state = HOME
        for delivery in self._waiting:
            self._inbox.put(delivery)
        self._waiting = []

    def wait_back(self, lost: Callable[[], bool], stopping: Callable[[], bool]) -> None:
        """I/O thread: wait until the consumer is home again: given back, taken back from
        a task running :data:`LONG_TASK_S` (or any task once ``stopping``), or until
        ``lost()`` (no executor).

        Raises:
            Exception: what the executor's poll or duties raised, raised here in the
                I/O thread (which then fails as if it had polled itself).
        """
        while not self._ended.wait(LOOK_S):
            with self._lock:
                if self.state == RUNNING and (stopping() or time.monotonic()
                                              - self._running_since >= LONG_TASK_S):
                    self._home()  # the task's thread finds it so when it ends
                    return
            if lost():
                with self._lock:
                    self._home()
                return
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

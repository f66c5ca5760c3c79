"""Time limits as a worker child enforces them, on what each executor thread is running.

A soft limit is an exception (``SoftTimeLimitExceeded``) the I/O thread raises in the
executor thread, only while it is inside the task function. A hard limit cannot stop
a thread: the I/O thread settles the delivery itself (claims it) and the child is
replaced. The options themselves belong to
:class:`~taskwarren.middleware.time_limit.TimeLimits`.
"""

from __future__ import annotations

import ctypes
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from taskwarren.brokers.base import Delivery
from taskwarren.errors import SoftTimeLimitExceeded
from taskwarren.task import Task

log = structlog.get_logger("taskwarren.worker")


@dataclass(slots=True)
class Running:
    """What one executor thread (or one slot of the event loop) is running.

    An async task's run has ``cancel``: its event loop enforces the soft limit itself,
    and past the hard one the I/O thread cancels it (instead of replacing the process)
    unless it is still running at ``abandon_by``.
    """

    delivery: Delivery
    thread_ident: int
    task: Task[Any, Any] | None = None
    soft_deadline: float = math.inf
    hard_deadline: float = math.inf
    soft_sent: bool = False
    claimed: bool = False  # settled by the I/O thread after the hard limit
    finished: bool = False  # its own thread reports it: the I/O thread may claim it no more
    in_task: bool = False  # inside the task function: a soft time limit may be sent
    cancel: Callable[[], None] | None = None  # an async task's: cancel it, from any thread
    abandon_by: float = math.inf  # cancelled past its hard limit: gone by then, or replace

    def arm(self, task: Task[Any, Any]) -> None:
        """The task function is about to run: its limits count from now."""
        now = time.monotonic()
        self.task = task
        opts = task.task_options
        if opts.soft_time_limit_s is not None and self.cancel is None:
            self.soft_deadline = now + opts.soft_time_limit_s
        if opts.time_limit_s is not None:
            self.hard_deadline = now + opts.time_limit_s
        self.in_task = True

    def disarm(self, lock: threading.Lock) -> None:
        """The task function returned or raised: no soft time limit may land any more.

        The I/O thread sends one only while ``in_task`` holds, under ``lock``; one it
        sent that has not been raised yet is withdrawn here. Raised in the executor's
        own code it would end the thread with the delivery unsettled.
        """
        with lock:
            self.in_task = False
            if self.soft_sent:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread_ident),
                                                           None)

    def finish(self, lock: threading.Lock) -> bool:
        """The run's own thread is about to report it: True unless the I/O thread has
        claimed it (and reported it) already. Either reports it, never both."""
        with lock:
            self.finished = not self.claimed
            return self.finished

    def next_deadline(self) -> float:
        """The nearest deadline the I/O thread must wake up for (monotonic seconds)."""
        nearest = math.inf
        # A soft limit already sent (or that can no longer be, the function having
        # returned) is no deadline any more: counting it would make every poll
        # return at once, a busy loop until the task ends.
        if self.in_task and not self.soft_sent:
            nearest = self.soft_deadline
        if not self.claimed and not self.finished:
            nearest = min(nearest, self.hard_deadline)
        return min(nearest, self.abandon_by)

    def send_soft_limit(self, lock: threading.Lock, now: float) -> None:
        """Raise ``SoftTimeLimitExceeded`` in the task if its soft limit has passed."""
        if now >= self.soft_deadline and not self.soft_sent:
            with lock:  # see disarm: only into a task still running
                if self.in_task and not self.soft_sent:
                    self.soft_sent = True
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(
                        ctypes.c_ulong(self.thread_ident), ctypes.py_object(SoftTimeLimitExceeded))


def enforce(running: dict[int, Running], lock: threading.Lock,
            settle: Callable[[Running, Task[Any, Any]], None], grace_s: float,
            replacing: bool) -> bool:
    """Send the soft limits that are due and settle the runs past their hard one.

    ``settle(run, task)`` settles a run past its hard limit; a plain task's thread
    cannot be stopped, so the child must then be replaced, and an async task that is
    still running ``grace_s`` after its cancel too. Returns whether it must be.
    """
    now = time.monotonic()
    with lock:
        runs = list(running.values())
    replace = False
    for run in runs:
        if now >= run.abandon_by and not (replacing or replace):  # it swallowed the
            log.error("task.cancel_ignored", waited_s=grace_s)  # cancel, or blocks the loop
            replace = True
        run.send_soft_limit(lock, now)
        if now >= run.hard_deadline and run.task is not None:
            with lock:
                if run.claimed or run.finished or run.thread_ident not in running:
                    continue
                run.claimed = True
            settle(run, run.task)
            if run.cancel is None:
                replace = True  # a thread cannot be killed: replace the process
            else:
                run.abandon_by = now + grace_s
                run.cancel()
    return replace

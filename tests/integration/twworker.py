"""Tasks that misbehave in the ways a worker child must survive (issue 10).

Like :mod:`tests.integration.twtasks`, every task writes ``event n pid unix-time`` lines
to the ledger it is given, one O_APPEND write each.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import sys
import threading
import time
from types import FrameType
from typing import Any

from taskwarren import Retry, SoftTimeLimitExceeded, task
from tests.integration.twtasks import _mark

QUEUE = "twtest-worker"


@task(queue=QUEUE, soft_time_limit=0.3, time_limit=60)
def outlives_soft_limit(n: int, ledger: str, run_s: float) -> None:
    """Catch the soft time limit, then keep working (in short steps) for ``run_s``."""
    _mark(ledger, "start", n)
    try:
        while True:
            time.sleep(0.01)
    except SoftTimeLimitExceeded:
        _mark(ledger, "soft", n)
    until = time.monotonic() + run_s
    while time.monotonic() < until:
        time.sleep(0.01)
    _mark(ledger, "end", n)


@task(queue=QUEUE, retries=3)
def retries_after(n: int, ledger: str, delay: str) -> None:
    """Ask once for a retry after ``float(delay)`` seconds; end on the next attempt."""
    with open(ledger) as f:
        tries = sum(1 for line in f if line.startswith(f"start {n} "))
    _mark(ledger, "start", n)
    if not tries:
        raise Retry(delay=float(delay))
    _mark(ledger, "end", n)


@task(queue=QUEUE)
def raises_base(n: int, ledger: str, kind: str) -> None:
    """Raise an exception that is not an ``Exception``: SystemExit and the like."""
    _mark(ledger, "start", n)
    errors: dict[str, BaseException] = {"exit": SystemExit(3), "interrupt": KeyboardInterrupt(),
                                        "cancelled": asyncio.CancelledError()}
    raise errors[kind]


def _after_return(then: Any, at: str = "") -> None:
    """Call ``then()`` in this thread once the calling task function has returned.

    ``then`` runs at the first call the executor thread makes after the return, or at
    its first call of the C method ``at`` (``Class.method``). A profile hook (this thread only)
    makes deterministic what is otherwise a race: something happening in the
    executor's own code just after the task returned. An exception ``then`` raises
    surfaces at that call, in the executor's frame.
    """
    task_frame = sys._getframe(1)
    returned = False

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal returned
        if event == "return" and frame is task_frame:
            returned = True
        elif returned and event in ("call", "c_call") and (
                not at or (event == "c_call" and _c_name(arg) == at)):
            sys.setprofile(None)
            then()

    sys.setprofile(hook)


def _c_name(fn: Any) -> str:
    return f"{type(getattr(fn, '__self__', None)).__name__}.{getattr(fn, '__name__', '')}"


def _sleep_past_soft_limit() -> None:
    # A C-level sleep: the soft limit is sent meanwhile and raised when it returns.
    time.sleep(1.0)


@task(queue=QUEUE, soft_time_limit=0.3, time_limit=30)
def soft_limit_after_return(n: int, ledger: str) -> None:
    """Return at once; the soft limit (0.3 s) then lands in the executor's code."""
    _mark(ledger, "start", n)
    _after_return(_sleep_past_soft_limit)
    _mark(ledger, "end", n)


def _break_executor() -> None:
    raise RuntimeError("executor thread broken on purpose")


@task(queue=QUEUE)
def breaks_its_executor(n: int, ledger: str) -> None:
    """Succeed, then break the executor thread where it waits for its next delivery."""
    _mark(ledger, "start", n)
    _after_return(_break_executor, at="SimpleQueue.get")
    _mark(ledger, "end", n)


def _starts(ledger: str, n: int) -> int:
    with open(ledger) as f:
        return sum(1 for line in f if line.startswith(f"start {n} "))


@task(queue=QUEUE)
def naps(n: int, ledger: str, sleep_s: float) -> None:
    """An innocent task that takes a while."""
    _mark(ledger, "start", n)
    until = time.monotonic() + sleep_s
    while time.monotonic() < until:
        time.sleep(0.01)
    _mark(ledger, "end", n)


@task(queue=QUEUE)
def ends_its_child(n: int, ledger: str, beside: int, times: int, how: str,
                   wait_s: float = 20.0) -> None:
    """Once task ``beside`` runs too (or after ``wait_s``), end this child; ``times``
    times, then succeed.

    ``how``: ``exit`` (the task kills its process) or ``io`` (an exception in the
    child's I/O thread: a death no running task caused).
    """
    before = _starts(ledger, n)
    _mark(ledger, "start", n)
    if before < times:
        deadline = time.monotonic() + wait_s
        while _starts(ledger, beside) <= before and time.monotonic() < deadline:
            time.sleep(0.01)
        if how == "exit":
            os._exit(13)
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(threading.main_thread().ident or 0),
            ctypes.py_object(RuntimeError))
        time.sleep(10)  # the child dies meanwhile
    _mark(ledger, "end", n)

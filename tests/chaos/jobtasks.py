"""The tasks of the job-state chaos scenarios: each kind of life a job can have.

Every run appends one ledger line (the chaos format, ``n pid time message_id redelivered
delivery_count attempt``, see :mod:`tests.chaos.chaostasks`) with one ``O_APPEND`` write
and ``fdatasync`` before it returns: ``succeed`` to the ledger it is given once it is
about to succeed, ``die`` and ``exhaust`` to theirs on every (failing) attempt.
"""

from __future__ import annotations

import os
import time

from taskwarren import Retry, task
from taskwarren.retries import Backoff
from tests.chaos.chaostasks import _delivery_facts

QUEUE = "chaos-jobs-default"


class Doomed(RuntimeError):
    """What the failing tasks raise."""


def _append(ledger: str, n: int) -> int:
    message_id, redelivered, count, attempt = _delivery_facts()
    line = (f"{n} {os.getpid()} {time.time():.6f} {message_id} {redelivered} {count} "
            f"{attempt}\n")
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fdatasync(fd)
    finally:
        os.close(fd)
    return attempt


@task(queue=QUEUE, retries=3)
def succeed(n: int, ledger: str, sleep_s: float = 0.0, retry_first: bool = False) -> None:
    """Sleep (a kill may land mid-task), ask for one retry first if told to, then record
    the success."""
    if sleep_s:
        time.sleep(sleep_s)
    if retry_first and _delivery_facts()[3] == 0:
        raise Retry(delay=1)
    _append(ledger, n)


@task(queue=QUEUE, retries=0)
def die(n: int, ledger: str, sleep_s: float = 0.0) -> None:
    """Fail at once, with no retry: the job is dead after one attempt."""
    if sleep_s:
        time.sleep(sleep_s)
    _append(ledger, n)
    raise Doomed(f"job {n} was meant to die")


@task(queue=QUEUE, retries=2, backoff=Backoff(base_s=1.0, max_s=1.0, min_s=1.0))
def exhaust(n: int, ledger: str, sleep_s: float = 0.0) -> None:
    """Fail every attempt: dead after its two retries (one second apart)."""
    if sleep_s:
        time.sleep(sleep_s)
    _append(ledger, n)
    raise Doomed(f"job {n} failed again")

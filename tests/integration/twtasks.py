"""Tasks the integration tests run in real worker pools.

Every task writes ``event n pid unix-time`` lines to the ledger file it is
given, with one O_APPEND write each, so tests can tell what ran, where, how often.
"""

from __future__ import annotations

import os
import time

from taskwarren import Backoff, Retry, SoftTimeLimitExceeded, task


def _mark(ledger: str, event: str, n: int) -> None:
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {n} {os.getpid()} {time.time():.6f}\n".encode())
    finally:
        os.close(fd)


@task(queue="twtest-default")
def work(n: int, ledger: str, sleep_s: float = 0.0, mode: str = "ok") -> None:
    """Record a start, maybe sleep, fail or kill the process, then record the end."""
    _mark(ledger, "start", n)
    if sleep_s:
        time.sleep(sleep_s)
    if mode == "raise":
        raise ValueError(f"task {n} failed on purpose")
    if mode == "exit":
        os._exit(13)
    _mark(ledger, "end", n)


@task(queue="twtest-default", retries=5)
def flaky(n: int, ledger: str, fail_times: int, retry_delay_s: float = 1.0) -> None:
    """Ask for a retry (after ``retry_delay_s``) until it has failed ``fail_times`` times."""
    with open(ledger) as f:
        tries = sum(1 for line in f if line.startswith(f"start {n} "))
    _mark(ledger, "start", n)
    if tries < fail_times:
        raise Retry(delay=retry_delay_s)
    _mark(ledger, "end", n)


@task(queue="twtest-default", retries=2, backoff=Backoff(base_s=1, max_s=1, min_s=1))
def always_fails(n: int, ledger: str) -> None:
    """Fail every time: retried twice with a one-second backoff, then dead-lettered."""
    _mark(ledger, "start", n)
    raise RuntimeError(f"attempt failed for {n}")


@task(queue="twtest-default", time_limit=1.5)
def overruns(n: int, ledger: str, sleep_s: float) -> None:
    """Run past the hard time limit when ``sleep_s`` > 1.5."""
    _mark(ledger, "start", n)
    time.sleep(sleep_s)
    _mark(ledger, "end", n)


@task(queue="twtest-default", soft_time_limit=0.5, time_limit=10)
def catches_soft_limit(n: int, ledger: str) -> None:
    """Notice the soft limit and finish early.

    The soft limit is raised between Python bytecodes, so a single long C call (one
    ``time.sleep(5)``) would delay it; work done in steps sees it promptly.
    """
    _mark(ledger, "start", n)
    try:
        for _ in range(500):
            time.sleep(0.01)
    except SoftTimeLimitExceeded:
        _mark(ledger, "soft", n)
    _mark(ledger, "end", n)


@task(queue="twtest-default")
def relay(n: int, ledger: str, queue: str) -> None:
    """Send ``work(n)`` to ``queue`` from inside a worker (a task that sends a task)."""
    work.options(queue=queue).send(n, ledger)

"""Tasks the integration tests run in real worker pools.

Every task writes ``start n pid`` and ``end n pid`` lines to the ledger file it is
given, with one O_APPEND write each, so tests can tell what ran, where, how often.
"""

from __future__ import annotations

import os
import time

from taskwarren import task


def _mark(ledger: str, event: str, n: int) -> None:
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {n} {os.getpid()}\n".encode())
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

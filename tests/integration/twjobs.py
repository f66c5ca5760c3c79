"""Tasks the job-state tests run in real worker pools (``taskwarren worker``).

Each writes ``event n pid unix-time`` lines to the ledger it is given.
"""

from __future__ import annotations

import time

from taskwarren import cancel_requested, task
from tests.integration.twtasks import _mark


@task(queue="twjobs-default")
def patient(n: int, ledger: str, limit_s: float = 20.0) -> None:
    """Work until told of a cancel (or ``limit_s``), saying which."""
    _mark(ledger, "start", n)
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if cancel_requested():
            _mark(ledger, "told", n)
            return
        time.sleep(0.05)
    _mark(ledger, "end", n)


@task(queue="twjobs-default", time_limit=1.0)
def overrun(n: int, ledger: str, sleep_s: float = 4.0) -> None:
    """Run past the hard time limit, then finish anyway (the worker has moved on)."""
    _mark(ledger, "start", n)
    time.sleep(sleep_s)
    _mark(ledger, "end", n)

"""Imported at start (as ``sitecustomize``) by the pool the schedule chaos test shifts.

That pool runs under libfaketime with ``FAKETIME_DONT_FAKE_MONOTONIC=1`` (without it the
monotonic clock jumps by the whole epoch and every timed wait of a thread hangs).
libfaketime 0.9.10 then turns the absolute ``CLOCK_MONOTONIC`` deadline of
``clock_nanosleep``, which ``time.sleep`` uses since Python 3.11, into a negative one:
every ``time.sleep`` raises ``OSError: [Errno 22]``, in taskwarren's code as in the
task's. Sleeping on ``select``'s relative timeout goes around it; nothing else changes.
"""

from __future__ import annotations

import os
import select
import time
from typing import SupportsIndex

if os.environ.get("FAKETIME"):
    def _sleep(secs: float | SupportsIndex) -> None:
        seconds = float(secs)
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            select.select([], [], [], left)

    time.sleep = _sleep

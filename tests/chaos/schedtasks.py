"""The scheduled task of the schedule chaos test: one ledger line per run of a tick.

``beat`` is a schedule (``every=1s``, ``overlap="allow"``). Each run sleeps a little (so
that a ``kill -9`` can land inside it), then appends one line to the ledger named by
``TW_SCHED_LEDGER`` with one ``O_APPEND`` write and ``fdatasync``::

    tick task_id pid pool wall_time real_time redelivered delivery_count

``wall_time`` is this process's ``time.time()`` (shifted under libfaketime);
``real_time`` is ``CLOCK_MONOTONIC``, which libfaketime leaves alone
(``FAKETIME_DONT_FAKE_MONOTONIC=1``) and which every process of the machine shares: the
test turns it into the real time of the run. ``pool`` is ``TW_SCHED_POOL``.

The queue is ``TW_SCHED_QUEUE``, read when the module is imported: a schedule's job goes
to its task's own queue, and each run of the test needs queues of its own.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta

from taskwarren import task
from tests.chaos.chaostasks import _delivery_facts

#: The queue of this run's ticks (the default only lets the test import the module).
QUEUE = os.environ.get("TW_SCHED_QUEUE", "chaos-sched-default")
#: How long a run takes before it records itself: long enough for a kill to land inside.
RUN_S = 0.7


@task(queue=QUEUE, every=timedelta(seconds=1), overlap="allow")
def beat(scheduled_at: datetime) -> None:
    """Record that the tick at ``scheduled_at`` ran, here and now."""
    time.sleep(RUN_S)
    message_id, redelivered, count, _ = _delivery_facts()
    line = (f"{int(scheduled_at.timestamp())} {message_id} {os.getpid()} "
            f"{os.environ.get('TW_SCHED_POOL', '-')} {time.time():.6f} "
            f"{time.monotonic():.6f} {redelivered} {count}\n")
    fd = os.open(os.environ["TW_SCHED_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                 0o644)
    try:
        os.write(fd, line.encode())
        os.fdatasync(fd)
    finally:
        os.close(fd)

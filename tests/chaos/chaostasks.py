"""The task the chaos workload runs in real worker pools.

``record`` appends one line per run to a ledger file, with one ``O_APPEND`` write
followed by ``fdatasync`` before it returns, so a run that returned is on disk before
its ack can be sent. A line is ``n pid unix_time message_id redelivered delivery_count attempt``;
the last four come from the delivery being run (found on the call stack, since a task
is not told its message id) and let the checker tell a redelivery from a re-publish.
"""

from __future__ import annotations

import os
import sys
import time
from types import FrameType

from taskwarren import Retry, task

QUEUE = "chaos-default"


def _delivery_facts() -> tuple[str, int, int, int]:
    """(message id, redelivered 0/1, delivery count, attempt) of the running delivery."""
    frame: FrameType | None = sys._getframe(2)
    for _ in range(8):
        if frame is None:
            break
        delivery = frame.f_locals.get("delivery")
        envelope = getattr(delivery, "envelope", None)
        if delivery is not None and envelope is not None:
            count = getattr(delivery, "delivery_count", 0)
            return (str(envelope.message_id) or "-", int(bool(delivery.redelivered)),
                    int(count) if isinstance(count, int) else 0, int(envelope.attempt))
        frame = frame.f_back
    return "-", -1, -1, -1


@task(queue=QUEUE, retries=3)
def record(n: int, ledger: str, sleep_s: float = 0.0, retry_first: bool = False) -> None:
    """Optionally sleep (a kill may land mid-task), then durably record that ``n`` ran.

    With ``retry_first`` the first attempt asks for a retry one second later instead,
    so the message goes through the broker's delay queues before it is recorded.
    """
    if sleep_s:
        time.sleep(sleep_s)
    message_id, redelivered, count, attempt = _delivery_facts()
    if retry_first and attempt == 0:
        raise Retry(delay=1)
    line = (f"{n} {os.getpid()} {time.time():.6f} {message_id} {redelivered} {count} "
            f"{attempt}\n")
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fdatasync(fd)
    finally:
        os.close(fd)

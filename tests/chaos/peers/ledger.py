"""The ledger line the peers' tasks write: the chaos checker's format, minus delivery facts."""

from __future__ import annotations

import os
import time


def record(n: int, ledger: str, sleep_s: float) -> None:
    """Sleep, then append ``n`` to the ledger with one O_APPEND write and fdatasync."""
    if sleep_s:
        time.sleep(sleep_s)
    line = f"{n} {os.getpid()} {time.time():.6f} - -1 -1 -1\n"
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fdatasync(fd)
    finally:
        os.close(fd)

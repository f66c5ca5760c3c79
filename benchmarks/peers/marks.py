"""Start marks: every benchmark task body calls :func:`started` and nothing else.

A mark is one fixed-width line, ``<monotonic start> <sent>``, appended to a file of the
process's own in ``$TW_BENCH_MARKS``. Fixed width lets the driver count marks by file
size without reading them; CLOCK_MONOTONIC is system-wide, so ``start - sent`` across
processes is a latency.
"""

from __future__ import annotations

import os
import time

#: Bytes per mark: two 20-character numbers, a space and a newline.
MARK_BYTES = 42
#: Where the driver tells workers to write their marks.
MARKS_ENV = "TW_BENCH_MARKS"
#: Queue type of the worker's queue (``classic`` or ``quorum``).
QTYPE_ENV = "TW_BENCH_QTYPE"
#: Name of the queue the worker consumes.
QUEUE_ENV = "TW_BENCH_QUEUE"
#: Broker URL (amqp://user:password@host:port/vhost).
URL_ENV = "TW_BENCH_URL"
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"

_fd: dict[int, int] = {}


def started(sent: float) -> None:
    """Record that a task body started now (``sent`` < 0 marks a warm-up task)."""
    now = time.monotonic()
    pid = os.getpid()
    fd = _fd.get(pid)
    if fd is None:  # first task in this process (a fork inherits nothing useful)
        path = os.path.join(os.environ[MARKS_ENV], f"{pid}.marks")
        fd = _fd[pid] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, b"%020.9f %020.9f\n" % (now, sent))


def read_marks(directory: str) -> list[tuple[float, float]]:
    """Every ``(start, sent)`` written in ``directory`` so far."""
    out = []
    for name in os.listdir(directory):
        with open(os.path.join(directory, name), "rb") as f:
            for line in f.read().splitlines():
                start, sent = line.split()
                out.append((float(start), float(sent)))
    return out


def count_marks(directory: str) -> int:
    """How many marks ``directory`` holds (by size: marks have a fixed width)."""
    total = 0
    for entry in os.scandir(directory):
        total += entry.stat().st_size
    return total // MARK_BYTES


def queue_type() -> str:
    """The queue type this process was told to use."""
    return os.environ.get(QTYPE_ENV, "classic")


def queue_name(default: str) -> str:
    """The queue this process was told to use."""
    return os.environ.get(QUEUE_ENV, default)


def url() -> str:
    """The broker URL this process was told to use."""
    return os.environ.get(URL_ENV, DEFAULT_URL)

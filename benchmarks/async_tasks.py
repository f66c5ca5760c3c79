#!/usr/bin/env python
"""Async tasks against executor threads (issue 16): N tasks that each wait ``SLEEP_S``.

``python benchmarks/async_tasks.py [N] [REPS]`` fills a fresh queue with N calls of one
task, starts ``taskwarren worker -c 1`` with the variant's options, and measures the
drain from the first task's start to the last one's end (each task appends one line
to a ledger), plus the child's CPU seconds. Variants, interleaved each rep:

* ``async c100``: ``async def`` awaiting ``asyncio.sleep``, ``--async-concurrency 100``;
* ``async c10``: the same with 10 at once;
* ``threads 100``/``threads 10``: a plain function in ``time.sleep``, ``--threads N``.

The worker loads this file as the module ``async_tasks`` (the queues come from
``BENCH_QUEUE`` and ``BENCH_SYNC_QUEUE``). Needs RabbitMQ at ``TASKWARREN_URL``
(default: the local guest broker). The machine's load skews it: run it on a quiet one,
and read the spread (min and max) beside the median.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from taskwarren import task

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
QUEUE = os.environ.get("BENCH_QUEUE", "bench-async")
SYNC_QUEUE = os.environ.get("BENCH_SYNC_QUEUE", "bench-async-sync")
SLEEP_S = 0.05
URL = os.environ.get("TASKWARREN_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def _mark(ledger: str, event: str) -> None:
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {time.time():.6f}\n".encode())
    finally:
        os.close(fd)


@task(queue=QUEUE, name="bench.async_nap")
async def async_nap(ledger: str, sleep_s: float) -> None:
    """Await ``sleep_s``."""
    _mark(ledger, "start")
    await asyncio.sleep(sleep_s)
    _mark(ledger, "end")


@task(queue=SYNC_QUEUE, name="bench.sync_nap")
def sync_nap(ledger: str, sleep_s: float) -> None:
    """Sleep ``sleep_s`` in an executor thread."""
    _mark(ledger, "start")
    time.sleep(sleep_s)
    _mark(ledger, "end")


VARIANTS = {
    "async c100": ("async", ["--async-concurrency", "100"]),
    "async c10": ("async", ["--async-concurrency", "10"]),
    "threads 100": ("sync", ["--threads", "100"]),
    "threads 10": ("sync", ["--threads", "10"]),
}


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _delete(*queues: str) -> None:
    """Delete this run's queues (the local guest broker, as the tests do)."""
    import amqp

    with amqp.Connection(host="127.0.0.1:5672", userid="guest", password="guest") as conn:
        channel = conn.channel()
        for name in queues:
            channel.queue_delete(name)


def measure(kind: str, extra: list[str], n: int) -> tuple[float, float]:
    """(drain seconds, child CPU seconds) of one run."""
    from taskwarren import Warren
    from taskwarren.brokers.capabilities import Admin, require

    queue = f"bench-async-{uuid.uuid4().hex[:8]}"
    ledger = tempfile.mktemp(prefix="tw-async-bench-")
    app = Warren(url=URL)
    fn = async_nap.fn if kind == "async" else sync_nap.fn
    name = async_nap.name if kind == "async" else sync_nap.name
    sender = app.task(queue=queue, name=name)(fn)
    sender.send_many([{"ledger": ledger, "sleep_s": SLEEP_S}] * n)
    # The queue is the task's own in the worker, as in an application (it sets the
    # queue's prefetch floor: threads, plus the loop's slots where async tasks live).
    env = {**os.environ, "BENCH_QUEUE" if kind == "async" else "BENCH_SYNC_QUEUE": queue,
           "PYTHONPATH": f"{HERE}:{ROOT}"}
    pool = subprocess.Popen([sys.executable, "-m", "taskwarren", "worker", "async_tasks", "-c",
                             "1", "-Q", queue, "--url", URL, *extra], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        ends = 0
        while ends < n and time.monotonic() < deadline:
            time.sleep(0.1)
            ends = sum(1 for line in Path(ledger).read_text().splitlines()
                       if line.startswith("end")) if Path(ledger).exists() else 0
        children = subprocess.run(["pgrep", "-P", str(pool.pid)], capture_output=True,
                                  text=True).stdout.split()
        cpu = sum(cpu_s(int(p)) for p in children)
    finally:
        pool.terminate()
        pool.wait(60)
    lines = [line.split() for line in Path(ledger).read_text().splitlines()]
    os.unlink(ledger)
    require(app.broker, Admin, "admin").purge(queue)
    app.close()
    _delete(queue, f"{queue}.dead")
    starts = [float(t) for e, t in lines if e == "start"]
    finish = [float(t) for e, t in lines if e == "end"]
    if len(finish) < n:
        raise RuntimeError(f"only {len(finish)} of {n} tasks ended")
    return max(finish) - min(starts), cpu


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    results: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    for _ in range(reps):
        for variant, (kind, extra) in VARIANTS.items():
            results[variant].append(measure(kind, extra, n))
    floor = n * SLEEP_S / 100
    print(f"{n} tasks of {SLEEP_S * 1000:.0f} ms each, -c 1, {reps} reps (median; "
          f"floor at 100 at once: {floor:.2f} s)\n")
    print("| variant | drain s (median) | min-max | tasks/s | child CPU s |\n|---|---|---|---|---|")
    for variant, runs in results.items():
        drains = [r[0] for r in runs]
        drain = statistics.median(drains)
        cpu = statistics.median(r[1] for r in runs)
        print(f"| {variant} | {drain:.2f} | {min(drains):.2f}-{max(drains):.2f} | "
              f"{n / drain:.0f} | {cpu:.2f} |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()

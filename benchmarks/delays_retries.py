#!/usr/bin/env python
"""Delay precision and the cost of a retry, on RabbitMQ.

Measures (issue: crash-safe delays and retries):

* delay precision: ``--n`` (200) tasks sent with delays spread over 1-10 s to a
  running ``-c 2`` pool; lateness = task start - (send time + delay); p50 and max.
* retry cost: the pool drains ``--m`` (2000) no-op tasks that succeed, then ``--m``
  tasks whose first attempt raises and is retried (published confirmed through the
  delay path, then acked). Cost of a retry = extra wall time per task of the failing
  drain over the succeeding one (the retries' second attempts are not counted).

Usage: ``python benchmarks/delays_retries.py [--url URL] [--n 200] [--m 2000]``.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from taskwarren import Backoff, Retry, Warren

URL = os.environ.get("TASKWARREN_BENCH_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
QUEUE = "bench_delays"
LEDGER = os.environ.get("TW_BENCH_LEDGER", "/tmp/tw-bench-ledger")

app = Warren(url=URL, queue_type="classic")


def _mark(kind: str, n: int) -> None:
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{kind} {n} {time.time():.6f}\n".encode())
    os.close(fd)


@app.task(queue=QUEUE, name="bench.delayed")
def delayed(n: int) -> None:
    _mark("start", n)


@app.task(queue=QUEUE, name="bench.flaky", retries=1, backoff=Backoff(min_s=30, base_s=30))
def flaky(n: int, fail: bool) -> None:
    if fail and n >= 0:
        _mark("fail", n)
        raise Retry(delay=3600)  # the second attempt waits on the broker, out of the way
    _mark("ok", n)


def ledger() -> list[tuple[str, int, float]]:
    try:
        lines = Path(LEDGER).read_text().splitlines()
    except FileNotFoundError:
        return []
    return [(k, int(n), float(t)) for k, n, t in (line.split() for line in lines)]


def wait(kind: str, count: int, timeout: float = 120) -> list[float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        times = [t for k, _, t in ledger() if k == kind]
        if len(times) >= count:
            return times
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {count} {kind}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--m", type=int, default=2000)
    args = parser.parse_args()
    global LEDGER
    LEDGER = os.environ["TW_BENCH_LEDGER"] = tempfile.mktemp(prefix="tw-bench-")
    app.declare([QUEUE])
    app.broker.purge(QUEUE)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "TW_BENCH_LEDGER": LEDGER}
    pool = subprocess.Popen([sys.executable, "-m", "taskwarren", "--log-format", "json",
                             "worker", "delays_retries", "-c", "2", "--url", URL],
                            env=env, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(2)  # the pool connects; not part of any measurement
        rng = random.Random(7)
        sent = {}
        for n in range(args.n):
            delay = rng.uniform(1, 10)
            sent[n] = time.time() + delay
            delayed.options(delay=delay).send(n)
            time.sleep(0.01)
        wait("start", args.n, 60)
        late = sorted(t - sent[n] for k, n, t in ledger() if k == "start")
        t0 = time.time()
        flaky.send_many([{"n": i, "fail": False} for i in range(args.m)])
        ok = wait("ok", args.m)
        ok_s = max(ok) - t0
        t1 = time.time()
        flaky.send_many([{"n": i, "fail": True} for i in range(args.m)])
        fails = wait("fail", args.m)
        while app.broker.stats(QUEUE).ready:  # the last retries confirmed and acked
            time.sleep(0.05)
        fail_s = max(fails) - t1
    finally:
        os.killpg(pool.pid, signal.SIGTERM)
        pool.wait(60)
        app.broker.purge(QUEUE)
        os.unlink(LEDGER)
    print(json.dumps({
        "delayed_tasks": args.n,
        "lateness_p50_ms": round(statistics.median(late) * 1000, 1),
        "lateness_min_ms": round(late[0] * 1000, 1),
        "lateness_max_ms": round(late[-1] * 1000, 1),
        "tasks": args.m,
        "succeed_drain_per_s": round(args.m / ok_s),
        "fail_and_retry_drain_per_s": round(args.m / fail_s),
        "retry_extra_cost_us": round((fail_s - ok_s) / args.m * 1e6),
    }))


if __name__ == "__main__":
    main()

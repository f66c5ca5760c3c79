#!/usr/bin/env python
"""taskwarren plug-in for the task-queue anchor benchmark (/work/shared/bench, see its README).

The harness calls this file as ``python taskwarren_bench.py --mode MODE ...``; the worker
imports it as the module ``taskwarren_bench`` (``python -m taskwarren worker taskwarren_bench``).

What taskwarren does here, and where it differs from the peers (raw py-amqp, Celery,
Dramatiq), all at taskwarren's defaults unless stated:

* Publisher confirms are ALWAYS on. ``.send()`` returns only once the broker has
  confirmed the persistent message (one round trip per call); ``.send_many()``
  pipelines confirms (window of 1000 in flight). Celery and Dramatiq publish without
  confirms by default, so compare taskwarren's ``default`` enqueue row with their
  ``confirm`` rows, and ``send_many`` with raw's ``window1000``.
* Every send validates the arguments against the task signature (pydantic) and
  publishes mandatory=True through the durable direct exchange ``taskwarren``.
* The default queue type is QUORUM (replicated log; a single node here). The peers use
  classic queues. Both are measured: the queue type is part of the variant name and
  each type has its own queue (a quorum queue cannot be redeclared classic):
  ``anchor_taskwarren_quorum`` and ``anchor_taskwarren_classic``, each with its
  ``.dead`` dead-letter queue (declared by taskwarren, purged here too).
* Quorum queues get x-delivery-limit=50, at-least-once dead-lettering and
  reject-publish overflow (taskwarren's declaration).
* Acks are late (after the body returns), coalesced by the worker into
  ``multiple=True`` frames. Prefetch is left to taskwarren, which adapts it to task
  durations (not pinned with --prefetch in any variant here).
* Worker: ``-c 2`` child processes (fork), one executor thread each unless ``-tN``
  says otherwise; log level INFO (taskwarren's default; no per-task log line).
* Tasks retry 0 times (taskwarren's default; same as Dramatiq max_retries=0 here).

Drain and queue types: run_all.sh fills the queue with the ``enqueue_default``
variant (``default`` = quorum) before every drain, without telling the enqueue which
drain follows. A drain of a classic variant therefore finds its own queue short: it
purges the quorum queue and fills its own with ``send_many`` BEFORE starting the
worker (untimed; drain rates count only from the first task start). The JSON row says
so in ``prefilled_by_drain``.
"""
from __future__ import annotations

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.environ.get("BENCH_HARNESS_DIR", "/work/shared/bench")
for _p in (HARNESS, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)
import benchlib  # noqa: E402

from taskwarren import Warren  # noqa: E402

SYSTEM = "taskwarren"
QUEUE_PREFIX = "anchor_taskwarren_"
QUEUE_TYPES = ("classic", "quorum")
# Which queue type the module-level app (the one the worker loads) uses.  This is
# taskwarren's own setting; the worker gets it through its environment.
QTYPE_ENV = "TASKWARREN_QUEUE_TYPE"
URL = (f"amqp://{benchlib.BROKER_USER}:{benchlib.BROKER_PASS}"
       f"@{benchlib.BROKER_HOST}:{benchlib.BROKER_PORT}/%2F")


def queue_of(qtype: str) -> str:
    return QUEUE_PREFIX + qtype


def build(qtype: str):
    """A Warren on the bench broker with the two benchmark tasks on queue_of(qtype)."""
    app = Warren(url=URL, queue_type=qtype)
    q = queue_of(qtype)

    # Explicit names: the producer runs this file as __main__, the worker imports it
    # as taskwarren_bench, and the default name (module.qualname) would differ.
    @app.task(queue=q, name="bench.noop")
    def noop(sent: float = 0.0) -> None:
        benchlib.task_body("noop", sent)

    @app.task(queue=q, name="bench.sleep1ms")
    def sleep1ms(sent: float = 0.0) -> None:
        benchlib.task_body("sleep1ms", sent)

    return app, {"noop": noop, "sleep1ms": sleep1ms}


# The app the worker finds when it imports this module (exactly one app with tasks).
QTYPE = os.environ.get(QTYPE_ENV) or "quorum"
app, TASKS = build(QTYPE)

# worker variant -> (queue type, extra worker flags)
DRAIN_VARIANTS = {
    "c2-classic": ("classic", ["-c", "2"]),
    "c2-quorum": ("quorum", ["-c", "2"]),
    "c2-t4-classic": ("classic", ["-c", "2", "--threads", "4"]),
}
DEFAULT_DRAIN = "c2-quorum"  # taskwarren's defaults: quorum queue, one thread per child
LATENCY_VARIANTS = ["c2-classic", "c2-quorum"]

# enqueue variant -> (queue type, how)
ENQUEUE_VARIANTS = {
    "default": ("quorum", "send"),            # taskwarren's ordinary call, its default queue
    "send_many": ("quorum", "send_many"),
    "default-classic": ("classic", "send"),
    "send_many-classic": ("classic", "send_many"),
}
# send_many: 0 = the n-1 timed tasks in ONE call; >0 = calls of this many tasks each.
SEND_MANY_CHUNK = int(os.environ.get("TASKWARREN_BENCH_CHUNK", "0"))


def all_queues():
    out = []
    for t in QUEUE_TYPES:
        out += [queue_of(t), queue_of(t) + ".dead"]
    return out


def worker_argv(variant: str):
    _, flags = DRAIN_VARIANTS[variant]
    return [sys.executable, "-m", "taskwarren", "worker", "taskwarren_bench", *flags]


def worker_env(variant: str):
    qtype, _ = DRAIN_VARIANTS[variant]
    pp = os.pathsep.join([HERE, HARNESS] + ([os.environ["PYTHONPATH"]]
                                           if os.environ.get("PYTHONPATH") else []))
    return {QTYPE_ENV: qtype, "PYTHONPATH": pp, "PYTHONDONTWRITEBYTECODE": "1",
            "BENCH_HARNESS_DIR": HARNESS}


def send_many_timed(task, n: int) -> float:
    calls = [{"sent": 0.0}] * n
    t0 = time.monotonic()
    if SEND_MANY_CHUNK > 0:
        for i in range(0, n, SEND_MANY_CHUNK):
            task.send_many(calls[i:i + SEND_MANY_CHUNK])
    else:
        task.send_many(calls)
    return time.monotonic() - t0


def do_enqueue(variant: str, task_name: str, n: int) -> dict:
    qtype, how = ENQUEUE_VARIANTS[variant]
    a, tasks = build(qtype)
    t = tasks[task_name]
    try:
        t.send(0.0)  # first publish: connection + declarations (untimed, counted in n)
        if how == "send":
            r = benchlib.timed_enqueue(SYSTEM, variant, task_name, n - 1, lambda i: t.send(0.0))
        else:
            dt = send_many_timed(t, n - 1)
            r = {"system": SYSTEM, "mode": "enqueue", "variant": variant, "task": task_name,
                 "n": n - 1, "seconds": round(dt, 4), "rate": round((n - 1) / dt, 1),
                 "send_many_chunk": SEND_MANY_CHUNK or n - 1}
    finally:
        a.close()
    r["n"] = n
    r["queue_type"] = qtype
    r["confirms"] = "each" if how == "send" else "pipelined-window1000"
    return r


def do_drain(variant: str, task_name: str, n: int) -> dict:
    qtype, _ = DRAIN_VARIANTS[variant]
    mine = queue_of(qtype)
    depth = benchlib.queue_depth(mine)
    prefilled = 0
    if depth < n:
        # run_all.sh filled the other queue type's queue: empty it, fill ours (untimed).
        others = [q for q in all_queues() if not q.startswith(mine)]
        benchlib.purge_queues(others)
        a, tasks = build(qtype)
        try:
            prefilled = n - max(depth, 0)
            tasks[task_name].send_many([{"sent": 0.0}] * prefilled)
        finally:
            a.close()
    r = benchlib.drain_with_worker(SYSTEM, variant, task_name, n, worker_argv(variant),
                                   env_extra=worker_env(variant))
    r["queue_type"] = qtype
    r["prefilled_by_drain"] = prefilled
    return r


def do_latency(variant: str, task_name: str, n: int) -> dict:
    qtype, _ = DRAIN_VARIANTS[variant]
    a, tasks = build(qtype)
    t = tasks[task_name]
    try:
        t.send(-1.0)  # connect + declare before the worker starts (a warm-up task)
        r = benchlib.latency_with_worker(SYSTEM, variant, n, worker_argv(variant),
                                         lambda sent: t.send(sent),
                                         env_extra=worker_env(variant))
    finally:
        a.close()
    r["queue_type"] = qtype
    return r


def main():
    a = benchlib.make_parser(SYSTEM).parse_args()
    if a.mode == "variants":
        print(json.dumps({"enqueue": list(ENQUEUE_VARIANTS), "enqueue_default": "default",
                          "drain": list(DRAIN_VARIANTS), "latency": LATENCY_VARIANTS,
                          "tasks": ["noop", "sleep1ms"]}))
    elif a.mode == "purge":
        # queues that do not exist yet are reported as None
        purged = benchlib.purge_queues(all_queues())
        benchlib.emit({"system": SYSTEM, "mode": "purge", "purged": purged})
    elif a.mode == "depth":
        print(benchlib.queue_depth(queue_of(ENQUEUE_VARIANTS["default"][0])))
    elif a.mode == "enqueue":
        v = a.variant if a.variant in ENQUEUE_VARIANTS else "default"
        benchlib.emit(do_enqueue(v, a.task, a.n))
    elif a.mode == "drain":
        v = a.variant if a.variant in DRAIN_VARIANTS else DEFAULT_DRAIN
        benchlib.emit(do_drain(v, a.task, a.n))
    elif a.mode == "latency":
        v = a.variant if a.variant in DRAIN_VARIANTS else DEFAULT_DRAIN
        benchlib.emit(do_latency(v, a.task, a.n))


if __name__ == "__main__":
    main()

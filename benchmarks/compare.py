#!/usr/bin/env python3
"""taskwarren beside raw py-amqp, Celery and Dramatiq, in one interleaved run.

Self-contained: on first use it makes a throwaway venv (``--venv``, default
``/tmp/taskwarren-bench-venv``) with the peers pinned in ``peers/requirements.txt`` and
taskwarren from this checkout (editable), then runs itself there. It needs only
RabbitMQ (``--url``, default guest on 127.0.0.1:5672) and ``python3 -m venv``.

Measurements (see benchmarks/README.md for definitions), each repetition running every
system before the next repetition starts, so that all systems see the same machine:

* ``enqueue``: a producer process alone; ``send``: N confirmed sends, one call each;
  ``send_many``: N sends in one batched call with pipelined confirms (raw: a sliding
  window of 1000; taskwarren: ``send_many``; Celery and Dramatiq have no such call).
* ``drain``: N no-op tasks queued beforehand, then a worker of 2 processes started;
  rate = (N-1) / (last start - first start). RSS and USS of every process of the
  worker are read once all N have started.
* ``latency``: the workers of every system idle at once; tasks sent round-robin, one
  every ``--gap-ms``, each carrying ``sent = time.monotonic()`` taken just before the
  publish call; latency = task start - sent. Classic and quorum queues (Dramatiq:
  classic only).

Usage::

    python3 benchmarks/compare.py                       # everything, 3 reps (~6 min)
    python3 benchmarks/compare.py --only latency --reps 5
    python3 benchmarks/compare.py --systems raw,taskwarren --drain-n 20000
    python3 benchmarks/compare.py --report results.jsonl   # the tables again
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = os.path.join(HERE, "peers")
REPO = os.path.dirname(HERE)
DEFAULT_VENV = "/tmp/taskwarren-bench-venv"
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
#: Set in the re-executed process, so that it does not set the venv up again.
IN_VENV_ENV = "TW_BENCH_IN_VENV"
SYSTEMS = ("raw", "celery", "dramatiq", "taskwarren", "baseline")
SECTIONS = ("enqueue", "drain", "latency")
#: Longest a worker gets to start, or to finish what it was given, before it counts as stuck.
STUCK_S = 120.0


# -- the venv --------------------------------------------------------------------------


def ensure_venv(venv: str) -> str:
    """The venv's python, made and filled first if needed."""
    python = os.path.join(venv, "bin", "python")
    stamp = os.path.join(venv, "twbench-installed")
    requirements = os.path.join(PEERS, "requirements.txt")
    with open(requirements, "rb") as f:
        wanted = f.read() + REPO.encode()
    if os.path.exists(stamp):
        with open(stamp, "rb") as f:
            if f.read() == wanted:
                return python
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    pip = [python, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "-r", requirements], check=True)
    subprocess.run([*pip, "-e", REPO], check=True)
    with open(stamp, "wb") as f:
        f.write(wanted)
    return python


# -- the broker, from the driver (py-amqp, installed in the venv) -------------------------


def queue_of(system: str, qtype: str) -> str:
    """The benchmark queue of ``system`` on a queue of type ``qtype``."""
    return f"twbench_{system}_{qtype}"


def companions(system: str, queue: str) -> list[str]:
    """Queues a system declares beside its own (dead letters)."""
    if system in ("taskwarren", "baseline"):
        return [queue + ".dead"]
    if system == "dramatiq":
        return [queue + ".DQ", queue + ".XQ"]
    return []


class Admin:
    """Purges and deletes the benchmark's own queues (never anyone else's)."""

    def __init__(self, url: str) -> None:
        sys.path.insert(0, PEERS)
        import raw  # the peer's connect(): one way to parse the URL

        self.conn = raw.connect(url)

    def _channel(self) -> Any:
        return self.conn.channel()

    def purge(self, queues: Iterable[str]) -> None:
        """Empty ``queues`` that exist."""
        for q in queues:
            ch = self._channel()
            try:
                ch.queue_purge(q)
            except Exception:
                pass
            finally:
                if ch.is_open:
                    ch.close()

    def delete(self, queues: Iterable[str], exchanges: Iterable[str] = ()) -> None:
        """Delete ``queues`` and ``exchanges`` that exist."""
        for q in queues:
            ch = self._channel()
            try:
                ch.queue_delete(q)
            except Exception:
                pass
            finally:
                if ch.is_open:
                    ch.close()
        for x in exchanges:
            ch = self._channel()
            try:
                ch.exchange_delete(x)
            except Exception:
                pass
            finally:
                if ch.is_open:
                    ch.close()


# -- processes ---------------------------------------------------------------------------


@dataclass
class Options:
    """What the run was asked for."""

    url: str
    python: str
    bin: str
    out: str
    baseline: str = ""  # a folder holding another taskwarren package, run as "baseline"


def peer_env(opts: Options, system: str, qtype: str, marks_dir: str = "") -> dict[str, str]:
    """The environment of a worker or producer of ``system``."""
    env = dict(os.environ)
    path = PEERS if system != "baseline" else os.pathsep.join([PEERS, opts.baseline])
    env.update({
        "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1", "TW_BENCH_URL": opts.url,
        "TW_BENCH_QTYPE": qtype, "TW_BENCH_QUEUE": queue_of(system, qtype),
        "TW_BENCH_MARKS": marks_dir, "TASKWARREN_URL": opts.url,
    })
    return env


def worker_argv(opts: Options, system: str) -> list[str]:
    """The command that runs a worker of 2 processes for ``system``."""
    if system == "raw":
        return [opts.python, os.path.join(PEERS, "raw.py"), "2", "100"]
    if system == "celery":
        return [os.path.join(opts.bin, "celery"), "-A", "celery_app", "worker", "-c", "2",
                "-P", "prefork", "--without-gossip", "--without-mingle",
                "--without-heartbeat", "-l", "WARNING"]
    if system == "dramatiq":
        return [os.path.join(opts.bin, "dramatiq"), "dramatiq_app", "-p", "2"]
    return [opts.python, "-m", "taskwarren", "worker", "tw_app", "-c", "2"]


MODULES = {"raw": "raw", "celery": "celery_app", "dramatiq": "dramatiq_app",
           "taskwarren": "tw_app", "baseline": "tw_app"}


class Worker:
    """A worker pool in a session of its own, writing marks to a fresh folder."""

    def __init__(self, opts: Options, system: str, qtype: str) -> None:
        self.marks = tempfile.mkdtemp(prefix=f"twbench-{system}-", dir=opts.out)
        self.log = open(os.path.join(self.marks + ".log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(worker_argv(opts, system), cwd=PEERS,
                                     env=peer_env(opts, system, qtype, self.marks),
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def count(self) -> int:
        """Tasks started so far."""
        import marks

        return marks.count_marks(self.marks)

    def wait_for(self, n: int, timeout_s: float = STUCK_S) -> bool:
        """Wait until ``n`` tasks have started; False on timeout or exit."""
        deadline = time.monotonic() + timeout_s
        while self.count() < n:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                return False
            time.sleep(0.02)
        return True

    def memory(self) -> list[dict[str, float]]:
        """RSS and USS (MB) of every process of the pool, the parent first."""
        import psutil

        out = []
        try:
            root = psutil.Process(self.proc.pid)
            for p in [root, *root.children(recursive=True)]:
                info = p.memory_full_info()
                out.append({"rss_mb": round(info.rss / 2**20, 1),
                            "uss_mb": round(info.uss / 2**20, 1)})
        except psutil.Error:
            pass
        return out

    def stop(self) -> None:
        """SIGTERM to the pool's process group, SIGKILL if it lingers."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()

    def marks_list(self) -> list[tuple[float, float]]:
        """Every ``(start, sent)`` mark."""
        import marks

        return marks.read_marks(self.marks)


class Producer:
    """A producer process of one system (peers/producer.py)."""

    def __init__(self, opts: Options, system: str, qtype: str) -> None:
        self.proc = subprocess.Popen([opts.python, os.path.join(PEERS, "producer.py"),
                                      MODULES[system]], cwd=PEERS,
                                     env=peer_env(opts, system, qtype),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, command: str) -> dict[str, Any]:
        """Send one command; its answer."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"producer exited on {command!r} (rc={self.proc.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        """Let the producer close its connection and exit."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- measurements ------------------------------------------------------------------------


def emit(out: Any, row: dict[str, Any]) -> None:
    """Write one result row (JSON line) and say it on stderr."""
    row["load1"] = round(os.getloadavg()[0], 2)
    out.write(json.dumps(row) + "\n")
    out.flush()
    print(json.dumps(row), file=sys.stderr)


def run_enqueue(opts: Options, admin: Admin, system: str, sizes: dict[str, int], rep: int,
                out: Any) -> None:
    """Confirmed ``send`` and ``send_many`` (``sizes`` tasks each), classic queue, no worker."""
    q = queue_of(system, "classic")
    producer = Producer(opts, system, "classic")
    try:
        for how, n in sizes.items():
            admin.purge([q])
            seconds = producer.ask(f"time_{how} {n}")["seconds"]
            if seconds is not None:
                emit(out, {"section": "enqueue", "variant": how, "system": system, "rep": rep,
                           "n": n, "rate": round(n / seconds, 1)})
    finally:
        producer.close()
        admin.purge([q])


def run_drain(opts: Options, admin: Admin, system: str, n: int, rep: int, out: Any) -> None:
    """Fill a classic queue with n tasks, then drain it with a 2-process worker."""
    q = queue_of(system, "classic")
    admin.purge([q])
    producer = Producer(opts, system, "classic")
    try:
        producer.ask(f"fill {n}")
    finally:
        producer.close()
    worker = Worker(opts, system, "classic")
    try:
        done = worker.wait_for(n, STUCK_S + n / 200)
        memory = worker.memory()
    finally:
        worker.stop()
        admin.purge([q])
    starts = sorted(start for start, _ in worker.marks_list())
    row: dict[str, Any] = {"section": "drain", "variant": "classic", "system": system,
                           "rep": rep, "n": n, "executed": len(starts), "memory": memory}
    if not done or len(starts) < 2:
        row["error"] = f"only {len(starts)} of {n} tasks started (log: {worker.marks}.log)"
    else:
        row["rate"] = round((len(starts) - 1) / (starts[-1] - starts[0]), 1)
    emit(out, row)


def run_latency(opts: Options, admin: Admin, systems: list[str], qtype: str, n: int,
                gap_s: float, rep: int, out: Any) -> None:
    """All workers idle at once; one task every gap_s, round-robin over the systems."""
    systems = [s for s in systems if qtype == "classic" or s != "dramatiq"]
    queues = [queue_of(s, qtype) for s in systems]
    admin.purge(queues)
    producers = {s: Producer(opts, s, qtype) for s in systems}
    workers: dict[str, Worker] = {}
    try:
        for s in systems:
            producers[s].ask("warm 1")  # declares the queue before the worker consumes
        workers = {s: Worker(opts, s, qtype) for s in systems}
        warm = 20
        for s in systems:
            producers[s].ask(f"warm {warm - 1}")
        for s in systems:
            if not workers[s].wait_for(warm):
                raise RuntimeError(f"{s} worker did not start (log: {workers[s].marks}.log)")
        order = list(systems)
        next_at = time.monotonic()
        for _ in range(n):
            random.shuffle(order)  # no system always follows the same one
            for s in order:
                next_at += gap_s
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                producers[s].ask("send")
        for s in systems:
            workers[s].wait_for(warm + n, 30)
    finally:
        for p in producers.values():
            p.close()
        for w in workers.values():
            w.stop()
        admin.purge(queues)
    for s in systems:
        lat = sorted((start - sent) * 1000 for start, sent in workers[s].marks_list()
                     if sent >= 0)
        row: dict[str, Any] = {"section": "latency", "variant": qtype, "system": s,
                               "rep": rep, "n": len(lat)}
        if len(lat) < n:
            row["error"] = f"{len(lat)} of {n} tasks started"
        if lat:
            row.update(p50_ms=round(percentile(lat, 50), 3), p99_ms=round(percentile(lat, 99), 3),
                       max_ms=round(lat[-1], 3))
        emit(out, row)


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile of sorted ``values`` (nearest rank)."""
    k = max(0, min(len(values) - 1, round(p / 100 * len(values) + 0.5) - 1))
    return values[k]


# -- the report --------------------------------------------------------------------------


def values_in(rows: list[dict[str, Any]], section: str, variant: str, system: str, field: str,
              rep: int) -> list[float]:
    """``field`` of the rows of one measurement in repetition ``rep``."""
    return [r[field] for r in rows if r["section"] == section and r["variant"] == variant
            and r["system"] == system and r["rep"] == rep and field in r]


def report(rows: list[dict[str, Any]]) -> str:
    """Markdown tables: medians over repetitions [min-max], and ratios to raw py-amqp."""
    good = [r for r in rows if "error" not in r]

    def values(section: str, variant: str, system: str, field: str) -> list[float]:
        return [r[field] for r in good if r["section"] == section and r["variant"] == variant
                and r["system"] == system and r.get(field) is not None]

    def cell(xs: list[float], digits: int) -> str:
        if not xs:
            return "-"
        fmt = f"%.{digits}f"
        med = fmt % statistics.median(xs)
        return med if len(xs) == 1 else f"{med} [{fmt % min(xs)}-{fmt % max(xs)}]"

    def ratio(a: list[float], b: list[float]) -> str:
        if not a or not b:
            return "-"
        return "%.2f" % (statistics.median(a) / statistics.median(b))

    present = [s for s in SYSTEMS if any(r["system"] == s for r in good)]
    lines = ["| measurement | " + " | ".join(present)
             + " | taskwarren / raw | taskwarren / dramatiq |",
             "|---" * (len(present) + 3) + "|"]
    table = [("drain, classic, 2 processes (tasks/s)", "drain", "classic", "rate", 0),
             ("`send`, confirmed, one call each (tasks/s)", "enqueue", "send", "rate", 0),
             ("`send_many`, pipelined confirms (tasks/s)", "enqueue", "send_many", "rate", 0),
             ("latency p50, classic (ms)", "latency", "classic", "p50_ms", 2),
             ("latency p99, classic (ms)", "latency", "classic", "p99_ms", 2),
             ("latency p50, quorum (ms)", "latency", "quorum", "p50_ms", 2),
             ("latency p99, quorum (ms)", "latency", "quorum", "p99_ms", 2)]
    for label, section, variant, field, digits in table:
        cells = [cell(values(section, variant, s, field), digits) for s in present]
        if all(c == "-" for c in cells):
            continue
        tw = values(section, variant, "taskwarren", field)
        to_raw = ratio(tw, values(section, variant, "raw", field))
        to_dramatiq = ratio(tw, values(section, variant, "dramatiq", field))
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {to_raw} | {to_dramatiq} |")
    # Per-rep ratios show how much of a ratio is noise.
    for section, variant, field in (("latency", "classic", "p50_ms"),
                                    ("latency", "quorum", "p50_ms"), ("drain", "classic", "rate")):
        for other in ("raw", "baseline"):
            per = []
            for rep in sorted({r["rep"] for r in good}):
                tw = values_in(good, section, variant, "taskwarren", field, rep)
                ref = values_in(good, section, variant, other, field, rep)
                if tw and ref:
                    per.append("%.2f" % (tw[0] / ref[0]))
            if per:
                lines.append(f"\ntaskwarren / {other}, {section} {variant} {field}, "
                             "per repetition: " + ", ".join(per))
    mem = []
    for s in present:
        drains = [r for r in good
                  if r["section"] == "drain" and r["system"] == s and r.get("memory")]
        if drains:
            procs = drains[-1]["memory"]
            mem.append(f"| {s} | " + " / ".join(f"{p['rss_mb']:.1f}" for p in procs)
                       + " | " + " / ".join(f"{p['uss_mb']:.1f}" for p in procs) + " |")
    if mem:
        lines += ["", "Worker memory after a drain, per process, parent first "
                  "(MB, last repetition):", "",
                  "| system | RSS | USS |", "|---|---|---|", *mem]
    bad = [r for r in rows if "error" in r]
    if bad:
        lines += ["", f"Failures ({len(bad)}):", *("- " + json.dumps(r) for r in bad)]
    loads = [r["load1"] for r in rows if "load1" in r]
    if loads:
        lines.append(f"\nLoad average (1 min) during the run: {min(loads):.1f}-{max(loads):.1f}")
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------


def read_rows(paths: Iterable[str]) -> list[dict[str, Any]]:
    """The result rows of JSON-lines files."""
    rows = []
    for path in paths:
        with open(path) as f:
            rows += [json.loads(line) for line in f if line.startswith("{")]
    return rows


def parse() -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", default=os.environ.get("TW_BENCH_VENV", DEFAULT_VENV))
    ap.add_argument("--url", default=os.environ.get("TW_BENCH_URL", DEFAULT_URL))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--systems", default=",".join(s for s in SYSTEMS if s != "baseline"))
    ap.add_argument("--only", default=",".join(SECTIONS), help="sections: enqueue,drain,latency")
    ap.add_argument("--drain-n", type=int, default=10000)
    ap.add_argument("--send-n", type=int, default=1000, help="confirmed sends, one call each")
    ap.add_argument("--send-many-n", type=int, default=10000)
    ap.add_argument("--latency-n", type=int, default=200, help="timed tasks per system per rep")
    ap.add_argument("--gap-ms", type=float, default=10.0, help="between two latency sends")
    ap.add_argument("--qtypes", default="classic,quorum", help="latency queue types")
    ap.add_argument("--out", default="/tmp/taskwarren-bench", help="results and worker logs")
    ap.add_argument("--baseline", metavar="DIR", default="",
                    help="also run the taskwarren package found in DIR (an older commit: "
                         "`git archive COMMIT taskwarren | tar -x -C DIR`) as system baseline")
    ap.add_argument("--report", metavar="JSONL", nargs="*",
                    help="print the tables of these results")
    return ap.parse_args()


def main() -> None:
    """Set the venv up, run the measurements interleaved, print the tables."""
    a = parse()
    if a.report:
        print(report(read_rows(a.report)))
        return
    if not os.environ.get(IN_VENV_ENV):
        python = ensure_venv(a.venv)
        os.environ[IN_VENV_ENV] = "1"
        os.execv(python, [python, os.path.abspath(__file__), *sys.argv[1:]])
    sys.path.insert(0, PEERS)
    os.makedirs(a.out, exist_ok=True)
    opts = Options(a.url, sys.executable, os.path.dirname(sys.executable), a.out,
                   os.path.abspath(a.baseline) if a.baseline else "")
    systems = [s for s in a.systems.split(",") if s and s != "baseline"]
    if a.baseline:
        systems.append("baseline")
    sections = [s for s in a.only.split(",") if s]
    admin = Admin(a.url)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = os.path.join(a.out, f"compare-{stamp}.jsonl")
    commit = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()
    with open(path, "w") as out:
        shown = dict(vars(a), url=re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", a.url))
        emit(out, {"section": "meta", "variant": "", "system": "", "rep": -1, "commit": commit,
                   "args": shown})
        try:
            for rep in range(a.reps):
                turn = systems[rep % len(systems):] + systems[:rep % len(systems)]
                if "enqueue" in sections:
                    for s in turn:
                        run_enqueue(opts, admin, s, {"send": a.send_n, "send_many": a.send_many_n},
                                    rep, out)
                if "drain" in sections:
                    for s in turn:
                        run_drain(opts, admin, s, a.drain_n, rep, out)
                if "latency" in sections:
                    for qtype in a.qtypes.split(","):
                        run_latency(opts, admin, turn, qtype, a.latency_n, a.gap_ms / 1000,
                                    rep, out)
        finally:
            mine = [queue_of(s, t) for s in SYSTEMS for t in ("classic", "quorum")]
            admin.delete([*mine, *(c for q in mine for c in companions(q.split("_")[1], q))],
                         [queue_of("celery", t) for t in ("classic", "quorum")])
    print(f"<!-- taskwarren {commit}; {path} -->")
    print(report(read_rows([path])))


if __name__ == "__main__":
    main()

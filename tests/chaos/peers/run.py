"""Run Celery or Dramatiq through one of the chaos suite's faults and print its row.

    /tmp/anchor-venv/bin/python -m tests.chaos.peers.run --system celery --fault kill-children

Faults: ``kill-children`` (SIGKILL a random worker process every 0.7-2 s, as scenario
1), ``broker-restart`` (restart a private node's app, as scenario 4), ``cut`` (cut and
stall links through the proxy, as scenario 5). The workload and the checker are the
suite's: N numbered tasks, a ledger written with O_APPEND + fdatasync, lost =
confirmed and never run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import amqp

from tests.chaos.history import History, Row, check, ledger_numbers
from tests.chaos.nodes import RabbitNode
from tests.support.proxy import FaultyProxy

ROOT = Path(__file__).resolve().parents[3]
SHARED = "amqp://guest:guest@127.0.0.1:5672/%2F"


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def _queue_state(url: str, queue: str) -> tuple[int, int]:
    conn = amqp.Connection(host=f"127.0.0.1:{_port(url)}", userid="guest", password="guest",
                           connect_timeout=5)
    conn.connect()
    try:
        _, ready, consumers = conn.channel().queue_declare(queue, passive=True)
        return int(ready), int(consumers)
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def _delete_queue(url: str, queue: str) -> None:
    with contextlib.suppress(Exception):
        conn = amqp.Connection(host=f"127.0.0.1:{_port(url)}", userid="guest",
                               password="guest", connect_timeout=5)
        conn.connect()
        conn.channel().queue_delete(queue)
        conn.close()


class PeerWorker:
    """The peer's worker command in a session of its own."""

    def __init__(self, system: str, url: str, log: Path) -> None:
        binary = Path(sys.executable).parent
        if system == "celery":
            argv = [str(binary / "celery"), "-A", "tests.chaos.peers.celery_app", "worker",
                    "-P", "prefork", "-c", "2", "-l", "WARNING", "-n",
                    f"chaos-{os.getpid()}@%h"]
        else:
            argv = [str(binary / "dramatiq"), "tests.chaos.peers.dramatiq_app", "-p", "2",
                    "-t", "1"]
        env = {**os.environ, "PEER_URL": url, "PYTHONPATH": str(ROOT)}
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, cwd=str(ROOT), env=env, stdout=self._log,
                                     stderr=self._log, start_new_session=True)

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                             text=True)
        return [int(p) for p in out.stdout.split()]

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            self._log.close()


def _sender(system: str, url: str) -> tuple[Callable[[int, str, float], Any], str]:
    os.environ["PEER_URL"] = url
    if system == "celery":
        from tests.chaos.peers import celery_app

        def send_celery(n: int, ledger: str, sleep_s: float) -> Any:
            return celery_app.record.apply_async(args=(n, ledger, sleep_s))

        return send_celery, celery_app.QUEUE
    from tests.chaos.peers import dramatiq_app

    def send_dramatiq(n: int, ledger: str, sleep_s: float) -> Any:
        return dramatiq_app.record.send(n, ledger, sleep_s)

    return send_dramatiq, dramatiq_app.QUEUE


def run(system: str, fault: str, tasks: int, sleep_s: float, seed: int) -> Row:
    rng = random.Random(f"{seed}-{system}-{fault}")
    work = Path(tempfile.mkdtemp(prefix=f"chaos-peer-{system}-"))
    ledger = work / "ledger.txt"
    ledger.touch()
    history = History()
    node: RabbitNode | None = None
    proxy: FaultyProxy | None = None
    workers: list[PeerWorker] = []
    keep = False
    started = time.monotonic()
    try:
        admin = SHARED
        if fault == "broker-restart":
            node = RabbitNode(f"twpeer-{os.getpid()}")
            node.start()
            admin = node.url
        url = admin
        if fault == "cut":
            proxy = FaultyProxy(_port(admin))
            url = proxy.url()
        send, queue = _sender(system, url)
        _delete_queue(admin, queue)
        workers.append(PeerWorker(system, url, work / "worker.log"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if _queue_state(admin, queue)[1] >= 1:
                    break
            time.sleep(0.2)
        done = threading.Event()

        def produce() -> None:
            pause = max(8.0, tasks / 200) / tasks
            try:
                for n in range(tasks):
                    began = time.monotonic()
                    while True:
                        try:
                            result = send(n, str(ledger), sleep_s)
                        except Exception as exc:
                            history.doubt([n], f"{type(exc).__name__}: {exc}")
                            time.sleep(0.5)
                            continue
                        history.sent([n], [str(getattr(result, "id", None)
                                                   or getattr(result, "message_id", n))])
                        break
                    time.sleep(max(0.0, pause - (time.monotonic() - began)))
            finally:
                done.set()

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        while not done.wait(rng.uniform(*((0.7, 2.0) if fault != "broker-restart"
                                            else (1.5, 3.0)))):
            worker = workers[-1]
            if worker.proc.poll() is not None:
                history.fault("worker exited, restarted by the harness",
                              str(worker.proc.returncode))
                workers.append(PeerWorker(system, url, work / "worker.log"))
                continue
            if fault == "kill-children":
                children = worker.children()
                if children:
                    victim = rng.choice(children)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(victim, signal.SIGKILL)
                        history.fault("child kill -9", str(victim), (victim,))
            elif fault == "broker-restart" and node is not None:
                node.restart_app()
                history.fault("broker restart")
            elif proxy is not None:
                kind = rng.choices(["cut all", "cut one", "stall"], [2, 3, 1])[0]
                if kind == "cut all":
                    history.fault("cut all links", str(proxy.cut_all()))
                elif kind == "cut one" and proxy.cut_one(rng):
                    history.fault("cut one link")
                elif kind == "stall":
                    proxy.stall(rng.uniform(0.5, 3.0))
                    history.fault("stall")
        producer.join(120)
        drain_started = time.monotonic()
        drain_s = float("nan")
        last, last_change = -1, time.monotonic()
        while time.monotonic() - drain_started < 90:
            ran = ledger_numbers(ledger)
            if set(history.confirmed) <= ran:
                drain_s = time.monotonic() - drain_started
                break
            if workers[-1].proc.poll() is not None:
                history.fault("worker exited, restarted by the harness",
                              str(workers[-1].proc.returncode))
                workers.append(PeerWorker(system, url, work / "worker.log"))
            if len(ran) != last:
                last, last_change = len(ran), time.monotonic()
            elif time.monotonic() - last_change > 10:
                break
            time.sleep(0.2)
        for worker in workers:
            worker.stop()
        left = _queue_state(admin, queue)[0]
        verdict = check(history, ledger)
        notes = [f"{left} message(s) left in the queue after the drain"] if left else []
        if verdict.lost:
            keep = True
            notes.append(f"log kept: {work / 'worker.log'}")
        return Row(scenario=f"{system}: {fault}", tasks=verdict.confirmed,
                   faults=history.fault_summary(), lost=len(verdict.lost),
                   duplicates=verdict.duplicates, drain_s=drain_s,
                   wall_s=time.monotonic() - started, sources="-",
                   in_doubt=f"{verdict.in_doubt_ran}/{verdict.in_doubt}",
                   passed=not verdict.lost, notes=notes, seed=seed)
    finally:
        for worker in workers:
            with contextlib.suppress(Exception):
                worker.stop(1)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        if proxy is not None:
            proxy.close()
        if node is not None:
            node.stop()
        else:
            with contextlib.suppress(Exception):
                _delete_queue(SHARED, "chaos_peer_celery" if system == "celery"
                              else "chaos_peer_dramatiq")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--system", choices=["celery", "dramatiq"], required=True)
    parser.add_argument("--fault", choices=["kill-children", "broker-restart", "cut"],
                        required=True)
    parser.add_argument("-n", "--tasks", type=int, default=2000)
    parser.add_argument("--sleep-s", type=float, default=0.003)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    args = parser.parse_args()
    row = run(args.system, args.fault, args.tasks, args.sleep_s, args.seed)
    print(row.markdown())
    for note in row.notes:
        print("  -", note)


if __name__ == "__main__":
    main()

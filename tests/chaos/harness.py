"""One chaos scenario: a queue, worker pools, a producer, faults, then the checker.

A scenario runs its producer while a fault loop injects faults, stops the faults and
heals what they broke, waits for every confirmed task to run (the drain), stops the
pools gracefully, runs whatever was still queued (so that late duplicates show up),
and checks the ledger against what was confirmed.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import amqp

from taskwarren import Warren
from taskwarren.topology import DELAY_LEVELS, dead_queue, delay_exchange
from tests.chaos import chaostasks
from tests.chaos.history import History, Row, Verdict, check, ledger_numbers
from tests.support.rabbit import connection, delete_queues, unique_queue
from tests.support.workers import Pool, wait_until

MODULE = "tests.chaos.chaostasks"


def tasks_per_scenario() -> int:
    """``TW_CHAOS_N``: tasks each scenario sends (a soak by hand sets it high)."""
    return int(os.environ.get("TW_CHAOS_N", "2000"))


_SEED = int(os.environ.get("TW_CHAOS_SEED") or int(time.time()) % 100_000)


def seed() -> int:
    """``TW_CHAOS_SEED``: replays the same fault schedule (the choices, not the timing)."""
    return _SEED


def production_window_s(tasks: int) -> float:
    """How long the producer spreads its sends over: long enough for several faults."""
    return max(8.0, tasks / 200)


def queue_depth(queue: str, url: str) -> tuple[int, int]:
    """(ready messages, consumers) of ``queue``, seen directly on the broker."""
    with connection(url) as conn:
        ch = conn.channel()
        _, ready, consumers = ch.queue_declare(queue, passive=True)
        return int(ready), int(consumers)


def dead_letters(queue: str, url: str) -> int:
    try:
        return queue_depth(dead_queue(queue), url)[0]
    except amqp.exceptions.NotFound:
        return 0


class Scenario:
    """Everything one scenario starts, so that it can all be stopped even on failure.

    Args:
        name: the scenario's row in the figures table.
        url: what clients (producer, pools) are given.
        admin_url: one broker that answers directly (not through a proxy), for looking
            at queues from the outside; a callable when it changes (a cluster).
        workdir: ledger, journals and pool logs go here.
        results: the session's table; the scenario appends its row.
        tasks: tasks the producer sends.
        sleep_s: how long each task sleeps before it records itself.
        retry_every: every this many tasks asks for one retry (through the delay
            queues) before it records itself; 0 for none.
        pool_env: extra environment for the worker pools.
    """

    def __init__(self, name: str, url: str, admin_url: str | Callable[[], str], workdir: Path,
                 results: list[Row], tasks: int | None = None, sleep_s: float = 0.003,
                 retry_every: int = 0, pool_env: dict[str, str] | None = None) -> None:
        self.name = name
        self.url = url
        self._admin = admin_url
        self.workdir = workdir
        self.results = results
        self.tasks = tasks if tasks is not None else tasks_per_scenario()
        self.sleep_s = sleep_s
        self.retry_every = retry_every
        self.pool_env = pool_env or {}
        #: The module the pools load their tasks from.
        self.module = MODULE
        self.seed = seed()
        self.rng = random.Random(f"{self.seed}-{name}")
        self.queue = unique_queue("chaos")
        self.ledger = workdir / "ledger.txt"
        self.ledger.touch()
        self.history = History()
        self.pools: dict[str, Pool] = {}
        self._concurrency: dict[str, int] = {}
        self._all_pools: list[Pool] = []
        self._generation = 0
        self.app = Warren(url=url, publish_timeout_s=60)
        self.task = self.app.task(name=chaostasks.record.name,
                                  queue=self.queue)(chaostasks.record.fn)
        self.app.declare([self.queue])
        self.producer_done = threading.Event()
        self._closing = threading.Event()
        self._producer: threading.Thread | None = None
        self._started = time.monotonic()
        self.drain_s = float("nan")
        self.pool_exit_codes: list[tuple[str, int]] = []
        self.problems: list[str] = []
        #: The broker may refuse (nack) sends in this scenario: a queue loses its leader.
        self.nacks_expected = False

    # -- plumbing ------------------------------------------------------------------------

    @property
    def admin_url(self) -> str:
        return self._admin() if callable(self._admin) else self._admin

    def __enter__(self) -> Scenario:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill every pool this scenario started, close the producer, drop the queue."""
        self._closing.set()
        self.producer_done.set()
        if self._producer is not None:
            self._producer.join(70)
        for pool in self._all_pools:
            with contextlib.suppress(Exception):
                pool.kill()
        with contextlib.suppress(Exception):
            self.app.close()
        with contextlib.suppress(Exception):
            delete_queues(self.queue, url=self.admin_url)

    # -- pools ---------------------------------------------------------------------------

    def start_pool(self, name: str, concurrency: int = 2, url: str | None = None) -> Pool:
        self._generation += 1
        log = self.workdir / f"pool-{name}-{self._generation}.log"
        pool = Pool(self.module, [self.queue], url or self.url, concurrency=concurrency,
                    log_path=log, env=self.pool_env)
        self.pools[name] = pool
        self._concurrency[name] = concurrency
        self._all_pools.append(pool)
        # Until its handlers are installed a SIGTERM kills the supervisor (exit -15):
        # a pool counts as started once it says so.
        wait_until(lambda: pool.proc.poll() is not None or b'"worker.pool_started"'
                   in log.read_bytes(), 30, interval=0.05, what=f"pool {name} starting")
        return pool

    def _stop_pool(self, name: str, pool: Pool, why: str, timeout: float = 60.0) -> int | None:
        """SIGTERM ``pool`` and wait; a non-zero exit or a hang is a problem."""
        try:
            code = pool.stop(timeout)
        except subprocess.TimeoutExpired:
            self.problems.append(f"pool {name} still running {timeout}s after SIGTERM "
                                 f"({why}; log: {pool.log_path})")
            return None
        self.pool_exit_codes.append((name, code))
        if code != 0:
            self.problems.append(f"pool {name} exited {code} after SIGTERM ({why}; "
                                 f"log: {pool.log_path})")
        return code

    def wait_consuming(self, consumers: int, timeout: float = 30.0) -> None:
        """Wait until ``queue`` has at least ``consumers`` consumers."""
        deadline = time.monotonic() + timeout
        seen = -1
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, amqp.exceptions.AMQPError):
                seen = queue_depth(self.queue, self.admin_url)[1]
                if seen >= consumers:
                    return
            time.sleep(0.1)
        raise AssertionError(f"{consumers} consumers wanted on {self.queue}, saw {seen}")

    def kill_child(self, pool_name: str | None = None) -> None:
        """SIGKILL one random child of one random pool."""
        name = pool_name or self.rng.choice(sorted(self.pools))
        children = self.pools[name].children()
        if not children:
            return
        victim = self.rng.choice(sorted(children))
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
            self.history.fault("child kill -9", f"{name}:{victim}", (victim,))

    def kill_pool(self, name: str, down_s: float = 0.5) -> None:
        """SIGKILL a pool's whole process group, then start it again."""
        pool = self.pools[name]
        pids = (pool.pid, *pool.children())
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pool.pid, signal.SIGKILL)
        pool.proc.wait(10)
        self.history.fault("pool kill -9", name, pids)
        time.sleep(down_s)
        self.start_pool(name, concurrency=self._concurrency[name])

    def restart_pool_gracefully(self, name: str, timeout: float = 60.0) -> None:
        """SIGTERM a pool, wait for it to exit (0 expected), start a new one in its place."""
        started = time.monotonic()
        code = self._stop_pool(name, self.pools[name], "rolling restart", timeout)
        self.history.fault("SIGTERM restart", f"{name} exit {code} in "
                           f"{time.monotonic() - started:.1f}s")
        self.start_pool(name, concurrency=self._concurrency[name])

    # -- producer ------------------------------------------------------------------------

    def start_producer(self, batch: int = 50, first: int = 0,
                       window_s: float | None = None) -> None:
        """Send ``tasks`` numbers in batches spread over ``window_s``, in a thread."""
        window = production_window_s(self.tasks) if window_s is None else window_s
        batches = max(1, self.tasks // batch)
        pause = window / batches

        def produce() -> None:
            try:
                for start in range(first, first + self.tasks, batch):
                    numbers = list(range(start, min(start + batch, first + self.tasks)))
                    began = time.monotonic()
                    if not self._send_until_confirmed(numbers):
                        return
                    time.sleep(max(0.0, pause - (time.monotonic() - began)))
            finally:
                self.producer_done.set()

        self._producer = threading.Thread(target=produce, name="producer", daemon=True)
        self._producer.start()

    def _send_until_confirmed(self, numbers: list[int]) -> bool:
        """Send one batch, and again after a failure, as an application would.

        Numbers of a failed attempt are in doubt until a later attempt is confirmed
        (a partly stored failed attempt then runs twice, under two task ids). Returns
        False when the scenario is closing.
        """
        calls = [{"n": n, "ledger": str(self.ledger), "sleep_s": self.sleep_s,
                  "retry_first": bool(self.retry_every and n % self.retry_every == 0)}
                 for n in numbers]
        while not self._closing.is_set():
            try:
                ids = self.task.send_many(calls)
            except Exception as exc:  # every failure is recorded
                self.history.doubt(numbers, f"{type(exc).__module__}.{type(exc).__name__}: "
                                            f"{exc}")
                self._closing.wait(0.5)
                continue
            self.history.sent(numbers, ids)
            return True
        return False

    def join_producer(self, timeout: float = 120.0) -> None:
        if self._producer is None:
            return
        self._producer.join(timeout)
        if self._producer.is_alive():
            self.problems.append(f"the producer hung: still sending after {timeout}s "
                                 f"({len(self.history.confirmed)} confirmed)")

    # -- faults --------------------------------------------------------------------------

    def inject_until_produced(self, fault: Callable[[], Any], every_s: tuple[float, float],
                              min_faults: int = 1, max_s: float = 120.0) -> None:
        """Call ``fault`` at random intervals until the producer is done (and at least
        ``min_faults`` times)."""
        deadline = time.monotonic() + max_s
        done = 0
        while time.monotonic() < deadline and (not self.producer_done.is_set()
                                               or done < min_faults):
            if self.producer_done.wait(self.rng.uniform(*every_s)) and done >= min_faults:
                break
            fault()
            done += 1

    # -- after the faults ----------------------------------------------------------------

    def drain(self, timeout: float = 90.0, settled_s: float = 5.0) -> float:
        """Wait until every confirmed task ran; returns the seconds it took.

        Gives up early when nothing ran for ``settled_s`` and the broker holds nothing
        that could still run (the queue and every delay level are empty).
        """
        self.join_producer()
        started = time.monotonic()
        deadline = started + timeout
        seen, last_growth = -1, started
        while time.monotonic() < deadline:
            ran = ledger_numbers(self.ledger)
            if set(self.history.confirmed) <= ran:
                self.drain_s = time.monotonic() - started
                return self.drain_s
            if len(ran) != seen:
                seen, last_growth = len(ran), time.monotonic()
            elif time.monotonic() - last_growth > settled_s and self._nothing_queued():
                break
            time.sleep(0.1)
        missing = set(self.history.confirmed) - ledger_numbers(self.ledger)
        self.problems.append(f"not drained after {time.monotonic() - started:.0f}s: "
                             f"{len(missing)} confirmed tasks never ran, e.g. "
                             f"{sorted(missing)[:10]}")
        self.drain_s = float("nan")
        return self.drain_s

    def _nothing_queued(self) -> bool:
        """True when the queue and every delay level hold no ready message."""
        try:
            with connection(self.admin_url) as conn:
                ch = conn.channel()
                for name in [self.queue, *(delay_exchange(n) for n in range(DELAY_LEVELS))]:
                    if ch.queue_declare(name, passive=True)[1]:
                        return False
        except (OSError, amqp.exceptions.AMQPError):
            return False
        return True

    def quiesce(self) -> None:
        """Stop every pool gracefully, then run what is still queued until nothing is."""
        for name, pool in list(self.pools.items()):
            self._stop_pool(name, pool, "final stop")
        self.pools.clear()
        sweeps = 3
        for attempt in range(sweeps + 1):
            ready = queue_depth(self.queue, self.admin_url)[0]
            if ready == 0:
                return
            if attempt == sweeps:
                break
            self.history.note(f"{ready} message(s) still queued after the drain (sweep "
                              f"{attempt + 1})")
            sweeper_name = f"sweeper{attempt}"
            sweeper = self.start_pool(sweeper_name, concurrency=1)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and queue_depth(self.queue, self.admin_url)[0]:
                time.sleep(0.2)
            time.sleep(0.5)
            self._stop_pool(sweeper_name, sweeper, "sweep")
            self.pools.clear()
        self.problems.append(f"{ready} message(s) would not leave the queue")

    def explain(self, verdict: Verdict) -> str:
        """The duplicates' sources, for the figures table."""
        return verdict.explain()

    def verdict(self) -> Verdict:
        """Check the history, add the row to the table, and fail on any problem."""
        verdict = check(self.history, self.ledger)
        dead = dead_letters(self.queue, self.admin_url)
        problems = list(self.problems)
        if verdict.lost:
            problems.append(f"{len(verdict.lost)} confirmed task(s) lost: "
                            f"{verdict.lost[:20]}")
        if verdict.unexpected:
            problems.append(f"tasks ran that were never sent: {verdict.unexpected[:20]}")
        if dead:
            problems.append(f"{dead} message(s) dead-lettered")
        errors = self.history.send_errors
        nacked = [e for e in errors if "PublishNackedError" in e]
        if nacked and self.nacks_expected:
            # The broker's own answer while a queue had no leader: the application was
            # told (nothing was lost silently) and sent again; the verdict counts the rest.
            notes_extra = [f"{len(nacked)} send_many call(s) nacked while a leader was "
                           "down, then sent again"]
            errors = [e for e in errors if e not in nacked]
        else:
            notes_extra = []
        if errors:
            problems.append(f"{len(errors)} send_many call(s) failed: {errors[:3]}")
        notes = [*self.history.notes, *notes_extra, *problems]
        self.results.append(Row(
            scenario=self.name,
            tasks=verdict.confirmed,
            faults=self.history.fault_summary(),
            lost=len(verdict.lost),
            duplicates=verdict.duplicates,
            drain_s=self.drain_s,
            wall_s=time.monotonic() - self._started,
            sources=self.explain(verdict),
            in_doubt=f"{verdict.in_doubt_ran}/{verdict.in_doubt}",
            passed=not problems,
            notes=notes,
            seed=self.seed,
        ))
        assert not problems, "\n".join(problems)
        return verdict

"""A job-state chaos scenario: mixed jobs, cancels, faults, then the jobs table judged.

The chaos :class:`~tests.chaos.harness.Scenario` with a job store: the producer sends
jobs of every kind of life (:mod:`tests.chaos.jobtasks`): succeed, retry once then
succeed, delayed (a share of them cancelled with ``app.jobs.cancel_job`` before they are
due), dead at once (``retries=0``) and dead after its retries. The pools record job state
(start with the cancel check, outcome events) and run the projector beside them.

After the faults, the checker joins what was confirmed and cancelled with what ran (the
ledgers) and with ``taskwarren_jobs``: each confirmed job has a row in the state its
kind and its cancel say; the per-state counts are exactly that; no job whose cancel
returned ``done=True`` ran (unless the store was unreachable then: workers run a job
unchecked while it is, by design, and the table says how many did).
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import amqp

from taskwarren import Warren
from taskwarren.middleware.jobs import RETRY_STORE_AFTER_S
from taskwarren.store import open_store
from taskwarren.store.jobs import TERMINAL_STATES, Cancelled
from taskwarren.store.schema import JOBS
from taskwarren.urls import events_queue
from tests.chaos import jobtasks
from tests.chaos.harness import Scenario, dead_letters, queue_depth
from tests.chaos.history import History, Row, check, read_ledger
from tests.support.rabbit import delete_queues

MODULE = "tests.chaos.jobtasks"
#: Kind of job ``n`` is, by ``n % 20``.
KINDS = (("dead",) * 2 + ("exhaust",) + ("retry",) * 3 + ("delayed",) * 6 + ("ok",) * 8)
#: Delayed jobs run this many seconds after they were sent.
DELAY_S = 4.0
#: Delayed jobs with ``n % 20`` in here are cancelled (half of them).
CANCELLED = {6, 8, 10}
#: How long after its send a delayed job is cancelled (the projector has its row by then).
CANCEL_AFTER_S = (0.8, 2.0)
#: Seconds after a store outage during which a worker may still run jobs unchecked.
UNCHECKED_AFTER_S = RETRY_STORE_AFTER_S + 2.0


def kind_of(n: int) -> str:
    return KINDS[n % len(KINDS)]


class JobScenario(Scenario):
    """A chaos scenario whose jobs are recorded in ``store_url``'s ``taskwarren_jobs``.

    Args:
        store_url: an empty database; taskwarren's tables are created.
        store_down: makes the store unavailable for a while; returns what it did.
        store_stays_up: ``store_down`` leaves the store reachable (it ends sessions or
            holds a lock; a new connection works at once): workers have no excuse to
            run a cancelled job unchecked after it.
    """

    def __init__(self, name: str, url: str, admin_url: str, workdir: Path,
                 results: list[Row], store_url: str, tasks: int,
                 store_down: Callable[[], str], store_stays_up: bool = False) -> None:
        super().__init__(name, url, admin_url, workdir, results, tasks=tasks,
                         pool_env={"TASKWARREN_STORE_URL": store_url})
        self.store_url = store_url
        self.module = MODULE
        self.store_down = store_down
        self.store_stays_up = store_stays_up
        store = open_store(store_url)
        try:
            store.init()
        finally:
            store.close()
        self.events_queue = events_queue(store_url)
        delete_queues(self.events_queue, url=self.admin_url)  # a previous run's leftovers
        self.app.close()
        self.app = Warren(url=url, store_url=store_url, publish_timeout_s=60)
        self.tasks_of = {t.name: self.app.task(name=t.name, queue=self.queue)(t.fn)
                         for t in (jobtasks.succeed, jobtasks.die, jobtasks.exhaust)}
        self.app.declare([self.queue])
        self.fails = workdir / "fails.txt"
        self.fails.touch()
        self.cancels: dict[int, Cancelled | str] = {}
        self.cancelled_at: dict[int, float] = {}
        self.outages: list[tuple[float, float]] = []
        self._due: list[tuple[float, int, str]] = []
        self._due_lock = threading.Condition()
        self._canceller = threading.Thread(target=self._cancel_loop, name="canceller",
                                           daemon=True)
        self._canceller.start()

    def close(self) -> None:
        with self._due_lock:
            self._closing.set()
            self._due_lock.notify_all()
        self._canceller.join(30)
        super().close()

    # -- producer ------------------------------------------------------------------------

    def _send_until_confirmed(self, numbers: list[int]) -> bool:
        groups: dict[tuple[str, float], list[int]] = {}
        for n in numbers:
            kind = kind_of(n)
            task = {"dead": jobtasks.die.name, "exhaust": jobtasks.exhaust.name}.get(
                kind, jobtasks.succeed.name)
            groups.setdefault((task, DELAY_S if kind == "delayed" else 0.0), []).append(n)
        for (name, delay_s), group in groups.items():
            if not self._send_group(name, delay_s, group):
                return False
        return True

    def _send_group(self, name: str, delay_s: float, numbers: list[int]) -> bool:
        task = self.tasks_of[name]
        calls = []
        for n in numbers:
            call: dict[str, Any] = {"n": n, "sleep_s": self.sleep_s}
            if name == jobtasks.succeed.name:
                call.update(ledger=str(self.ledger), retry_first=kind_of(n) == "retry")
            else:
                call["ledger"] = str(self.fails)
            calls.append(call)
        sender = task.options(delay=delay_s) if delay_s else task
        while not self._closing.is_set():
            try:
                ids = sender.send_many(calls)
            except Exception as exc:  # every failure is recorded
                self.history.doubt(numbers, f"{type(exc).__module__}.{type(exc).__name__}: "
                                            f"{exc}")
                self._closing.wait(0.5)
                continue
            self.history.sent(numbers, ids)
            if delay_s:
                self._plan_cancels(numbers, ids)
            return True
        return False

    # -- cancels -------------------------------------------------------------------------

    def _plan_cancels(self, numbers: list[int], ids: list[str]) -> None:
        with self._due_lock:
            for n, task_id in zip(numbers, ids, strict=True):
                if n % len(KINDS) in CANCELLED:
                    due = time.monotonic() + self.rng.uniform(*CANCEL_AFTER_S)
                    heapq.heappush(self._due, (due, n, task_id))
            self._due_lock.notify_all()

    def _cancel_loop(self) -> None:
        while True:
            with self._due_lock:
                while not self._closing.is_set() and (
                        not self._due or self._due[0][0] > time.monotonic()):
                    wait = self._due[0][0] - time.monotonic() if self._due else None
                    self._due_lock.wait(wait)
                if self._closing.is_set():
                    return
                _, n, task_id = heapq.heappop(self._due)
            try:
                self.cancels[n] = self.app.jobs.cancel_job(task_id)
                self.cancelled_at[n] = time.time()
            except Exception as exc:  # the store may be down: the cancel is in doubt
                self.cancels[n] = f"{type(exc).__name__}: {str(exc)[:200]}"

    def pending_cancels(self) -> int:
        with self._due_lock:
            return len(self._due)

    # -- faults --------------------------------------------------------------------------

    def _logged_pids(self, event: str) -> list[int]:
        """Pids that logged ``event`` in every pool log of this scenario, oldest first."""
        pids = []
        for log in sorted(self.workdir.glob("pool-*.log"), key=lambda p: p.stat().st_mtime):
            for line in log.read_text(errors="replace").splitlines():
                if f'"{event}"' in line:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        pids.append(int(json.loads(line)["pid"]))
        return pids

    def sidecars(self, pool_name: str) -> dict[str, int]:
        """The live relay and projector processes of a pool, by the pids they logged."""
        children = set(self.pools[pool_name].children())
        found = {}
        for kind in ("relay", "projector"):
            live = [pid for pid in self._logged_pids(f"{kind}.started") if pid in children]
            if live:
                found[kind] = live[-1]
        return found

    def kill_projector(self) -> None:
        """SIGKILL the projector sidecar of a random pool (its supervisor starts another)."""
        name = self.rng.choice(sorted(self.pools))
        pid = self.sidecars(name).get("projector")
        if pid is None:
            self.history.note(f"no live projector found in pool {name} to kill")
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            self.history.fault("projector kill -9", f"{name}:{pid}", (pid,))

    def kill_task_child(self) -> None:
        """SIGKILL a random child running tasks (not a sidecar) of a random pool."""
        name = self.rng.choice(sorted(self.pools))
        sidecars = set(self.sidecars(name).values())
        children = sorted(set(self.pools[name].children()) - sidecars)
        if not children:
            return
        victim = self.rng.choice(children)
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
            self.history.fault("child kill -9", f"{name}:{victim}", (victim,))

    def take_store_away(self) -> None:
        began = time.time()
        detail = self.store_down()
        if not self.store_stays_up:
            self.outages.append((began, time.time() + UNCHECKED_AFTER_S))
        self.history.fault("store unavailable" if not self.store_stays_up else
                           "store sessions ended" if "session" in detail else
                           "store write-locked", detail)

    # -- after the faults ----------------------------------------------------------------

    def expected(self) -> dict[int, str]:
        """The state each confirmed job must end in: by its kind, and its cancel."""
        out = {}
        for n in self.history.confirmed:
            kind = kind_of(n)
            cancel = self.cancels.get(n)
            if kind in ("dead", "exhaust"):
                out[n] = "dead"
            elif isinstance(cancel, Cancelled) and cancel.done:
                out[n] = "cancelled"
            elif isinstance(cancel, str):
                out[n] = "cancelled|succeeded"  # the cancel raised: either may be true
            else:
                out[n] = "succeeded"
        return out

    def _ran_all(self) -> bool:
        ran = {r.n for r in read_ledger(self.ledger)}
        failed = {(r.n, r.attempt) for r in read_ledger(self.fails)}
        for n, state in self.expected().items():
            if state == "succeeded" and n not in ran:
                return False
            if state == "dead" and (n, 0 if kind_of(n) == "dead" else 2) not in failed:
                return False
        return True

    def drain(self, timeout: float = 90.0, settled_s: float = 10.0) -> float:
        """Wait until every job ran to its end (the ledgers say so); the seconds it took."""
        self.join_producer()
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if not self.pending_cancels() and self._ran_all():
                self.drain_s = time.monotonic() - started
                return self.drain_s
            time.sleep(0.2)
        self.problems.append(f"not drained after {timeout:.0f}s: some confirmed jobs never "
                             "reached their end")
        return self.drain_s

    def rows(self) -> dict[str, str]:
        """task_id -> state of every row of ``taskwarren_jobs``."""
        store = open_store(self.store_url)
        try:
            with store.cursor() as cur:
                cur.execute(f"SELECT task_id, state FROM {JOBS}")
                found = {str(t): str(s) for t, s in cur.fetchall()}
                store.conn.commit()
            return found
        finally:
            store.close()

    def events_waiting(self) -> int:
        try:
            return queue_depth(self.events_queue, self.admin_url)[0]
        except (OSError, amqp.exceptions.AMQPError):
            return -1

    def settle_rows(self, timeout: float = 90.0) -> dict[str, str]:
        """Wait until the events queue is empty and the rows stop changing (all of them
        terminal, or unchanged for 5 s); returns them."""
        deadline = time.monotonic() + timeout
        last: dict[str, str] = {}
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            rows = self.rows()
            if rows != last:
                last, stable_since = rows, time.monotonic()
            waiting = self.events_waiting()
            settled = all(s in TERMINAL_STATES for s in rows.values())
            if waiting == 0 and ((settled and time.monotonic() - stable_since > 1.0)
                                 or time.monotonic() - stable_since > 5.0):
                return rows
            time.sleep(0.3)
        self.problems.append(f"job rows not settled after {timeout:.0f}s "
                             f"({self.events_waiting()} events waiting)")
        return last

    def judge(self, rows: dict[str, str]) -> dict[str, Counter[str]]:
        """Check the jobs table and the ledgers; add the figures row; fail on a problem."""
        expected = self.expected()
        ids = self.history.confirmed
        runs = read_ledger(self.ledger)
        ran_at: dict[int, list[float]] = {}
        ran_by: dict[int, int] = {}
        for run in runs:
            ran_at.setdefault(run.n, []).append(run.at)
            ran_by[run.n] = run.pid
        problems = list(self.problems)
        want: Counter[str] = Counter()
        wrong, missing, stuck = [], [], []
        for n, state in expected.items():
            got = rows.get(ids[n])
            if got is None:
                missing.append(n)
            elif got not in TERMINAL_STATES:
                stuck.append((n, got))
            elif got not in state.split("|"):
                wrong.append((n, state, got))
            want[got if "|" in state and got in state.split("|") else state] += 1
        strangers = set(rows) - set(ids.values())
        have = Counter(rows.values())
        if missing:
            problems.append(f"{len(missing)} confirmed job(s) have no row (lost): "
                            f"{missing[:10]}")
        if stuck:
            problems.append(f"{len(stuck)} job(s) not in a final state: {stuck[:10]}")
        if wrong:
            problems.append(f"{len(wrong)} job(s) in the wrong state (n, want, got): "
                            f"{wrong[:10]}")
        if strangers and not self.history.in_doubt:
            problems.append(f"{len(strangers)} row(s) of jobs never sent: "
                            f"{sorted(strangers)[:5]}")
        if have != want and not strangers:
            problems.append(f"state counts {dict(have)} != the truth {dict(want)}")
        cancelled = {n for n, c in self.cancels.items()
                     if isinstance(c, Cancelled) and c.done}
        unchecked, broken = [], []
        for n in sorted(cancelled & set(ran_at)):
            during = any(a <= t <= b for t in ran_at[n] for a, b in self.outages)
            (unchecked if during else broken).append(n)
        if broken:
            seen = [(n, round(ran_at[n][0] - self.cancelled_at[n], 2), ran_by[n])
                    for n in broken[:10]]
            problems.append(f"{len(broken)} of {len(cancelled)} job(s) ran after their cancel "
                            f"returned done=True, with the store up (n, seconds after the "
                            "cancel returned, pid): "
                            f"{seen}")
        succeed_history = History(
            confirmed={n: ids[n] for n, s in expected.items() if s == "succeeded"},
            in_doubt=set(self.history.in_doubt), faults=self.history.faults)
        verdict = check(succeed_history, self.ledger)
        if verdict.lost:
            problems.append(f"{len(verdict.lost)} job(s) meant to succeed never ran: "
                            f"{verdict.lost[:10]}")
        errors = self.history.send_errors
        if errors:
            problems.append(f"{len(errors)} send_many call(s) failed: {errors[:3]}")
        unreachable = sum(log.read_text(errors="replace").count('"jobs.store_unreachable"')
                          for log in self.workdir.glob("pool-*.log"))
        cancel_results = Counter("raised" if isinstance(c, str) else
                                 "done" if c.done else f"not done ({c.state or 'no row'})"
                                 for c in self.cancels.values())
        notes = [*self.history.notes,
                 f"rows per state {dict(sorted(have.items()))}, truth "
                 f"{dict(sorted(want.items()))}",
                 f"cancels: {dict(cancel_results)}; cancelled jobs that ran anyway while "
                 f"the store was unreachable (run unchecked, by design): {len(unchecked)}; "
                 f"{unreachable} 'jobs.store_unreachable' warning(s) in the pool logs",
                 f"{dead_letters(self.queue, self.admin_url)} message(s) in the dead-letter "
                 "queue", *problems]
        self.results.append(Row(
            scenario=self.name, tasks=len(ids), faults=self.history.fault_summary(),
            lost=len(missing) + len(verdict.lost), duplicates=verdict.duplicates,
            drain_s=self.drain_s, wall_s=time.monotonic() - self._started,
            sources=self.explain(verdict), in_doubt=f"{verdict.in_doubt_ran}/"
                                                    f"{verdict.in_doubt}",
            passed=not problems, notes=notes, seed=self.seed))
        assert not problems, "\n".join(problems)
        return {"rows": have, "truth": want}

"""Job state with real ``taskwarren worker`` pools on RabbitMQ: a running job told of its
cancel, a job past its hard time limit recorded dead (not left running, and not made
``succeeded`` by its thread finishing later), and a cancelled job never run."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskwarren import Warren
from taskwarren.store import open_store
from tests.integration import twjobs
from tests.support.workers import Ledger, Pool, wait_until

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]
MODULE = "tests.integration.twjobs"


class Jobs:
    """The test's own app (same store, same broker) and a pool of one child."""

    def __init__(self, store_url: str, rabbit_url: str, queue: str, tmp_path: Path) -> None:
        store = open_store(store_url)
        store.init()
        store.close()
        self.app = Warren(url=rabbit_url, store_url=store_url)
        self.patient = self.app.task(twjobs.patient.fn, name=twjobs.patient.name, queue=queue)
        self.overrun = self.app.task(twjobs.overrun.fn, name=twjobs.overrun.name, queue=queue,
                                     time_limit=1.0)
        self.pool = Pool(MODULE, [queue], rabbit_url, concurrency=1,
                         log_path=tmp_path / "w.log", env={"TASKWARREN_STORE_URL": store_url})

    def state(self, task_id: str) -> str:
        job = self.app.jobs.get(task_id)
        return job.state if job is not None else ""

    def close(self) -> None:
        self.pool.kill()
        self.app.close()


@pytest.fixture
def jobs(store_url: str, rabbit_url: str, queue: str, tmp_path: Path) -> Iterator[Jobs]:
    j = Jobs(store_url, rabbit_url, queue, tmp_path)
    yield j
    j.close()


def test_a_running_job_is_told_of_its_cancel(jobs: Jobs, ledger: Ledger) -> None:
    task_id = jobs.patient.send(1, str(ledger))
    wait_until(lambda: 1 in ledger.count("start"), 30, what="the job to start")
    try:
        # Written by the worker before the job started (JobRecorder.admit).
        wait_until(lambda: jobs.state(task_id) == "running", 10, what="its row to say running")
    except AssertionError as exc:  # what the worker said, for a failure in CI
        raise AssertionError(f"{exc}; row state {jobs.state(task_id)!r}; worker log:\n"
                             f"{jobs.pool.log_text()[-4000:]}") from None
    outcome = jobs.app.jobs.cancel_job(task_id)
    assert not outcome.done and outcome.state == "running", outcome
    assert "its worker was told" in outcome.how, outcome
    wait_until(lambda: 1 in ledger.count("told"), 10, what="the task to see cancel_requested()")
    wait_until(lambda: jobs.state(task_id) == "succeeded", 10, what="its outcome")
    assert 1 not in ledger.count("end")


def test_a_job_past_its_hard_limit_is_dead_and_stays_so(jobs: Jobs, ledger: Ledger) -> None:
    task_id = jobs.overrun.send(2, str(ledger), 3.0)
    wait_until(lambda: jobs.state(task_id) == "dead", 30, what="the job recorded dead")
    job = jobs.app.jobs.get(task_id)
    assert job is not None and job.error is not None and "TimeLimitExceeded" in job.error
    if job.started_at is None:
        # Kept from its start (the event does not know it), unless the worker could not
        # record the start: a store that does not answer in time is skipped, by design,
        # and the worker says so.
        assert "jobs.store_unreachable" in jobs.pool.log_text(), jobs.pool.log_text()[-3000:]
    # Its thread would finish 3 s after it started (if its child is not replaced first):
    # whatever it reports then is void.
    began = job.started_at if job.started_at is not None else time.time()
    time.sleep(max(0.0, began + 4.0 - time.time()))
    assert jobs.state(task_id) == "dead"


def test_a_cancelled_delayed_job_never_runs(jobs: Jobs, ledger: Ledger) -> None:
    # The row must still say "scheduled" when the projector beside the pool first
    # applies its events: on a loaded machine the pool may take seconds to start.
    wait_until(lambda: "worker.child_started" in jobs.pool.log_text(), 30,
               what="the pool to listen")
    cancelled = jobs.patient.options(delay=4).send(3, str(ledger), 0.1)
    kept = jobs.patient.options(delay=4).send(4, str(ledger), 0.1)
    wait_until(lambda: jobs.state(cancelled) == "scheduled", 30, what="the row")
    assert jobs.app.jobs.cancel(cancelled)
    wait_until(lambda: jobs.state(kept) == "succeeded", 30, what="the kept job")
    time.sleep(0.5)
    assert 3 not in ledger.count("start")
    assert jobs.state(cancelled) == "cancelled"


def test_a_cancel_holds_while_the_store_cannot_be_read(jobs: Jobs, ledger: Ledger,
                                                      store_url: str) -> None:
    """The workers alive when a job was cancelled skip it without the store: here a
    SQLite store stays locked while the job comes due (the start check cannot run)."""
    if not store_url.startswith("sqlite"):
        pytest.skip("locks the store's SQLite file")
    wait_until(lambda: "worker.child_started" in jobs.pool.log_text(), 30,
               what="the pool to listen")
    cancelled = jobs.patient.options(delay=3).send(5, str(ledger), 0.1)
    kept = jobs.patient.options(delay=3).send(6, str(ledger), 0.1)
    wait_until(lambda: jobs.state(cancelled) == "scheduled", 30, what="the row")
    wait_until(lambda: jobs.state(kept) == "scheduled", 30, what="the kept job's row")
    outcome = jobs.app.jobs.cancel_job(cancelled)
    assert outcome.done, outcome
    lock = sqlite3.connect(store_url.split("sqlite:///", 1)[1], isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        # Both come due while the store is locked: the kept one runs unchecked once the
        # worker gives the store up; the cancelled one must not run at all.
        wait_until(lambda: 6 in ledger.count("end"), 40, what="the kept job, unchecked")
        time.sleep(1.0)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert 5 not in ledger.count("start"), ledger.events()
    assert jobs.state(kept) in ("succeeded", "queued", "scheduled", "running")

"""The worker's job recorder: verdicts taken in a batch (admit) are used as they were
given, for the run they were given for."""

from __future__ import annotations

import time
from pathlib import Path

from taskwarren import Warren
from taskwarren.brokers.base import Delivery
from taskwarren.middleware import TaskRun
from taskwarren.middleware.jobs import JobRecorder
from taskwarren.store import open_store
from taskwarren.store.jobs import H_EPOCH
from taskwarren.testing import project


def setup(tmp_path: Path) -> tuple[Warren, JobRecorder, list[Delivery]]:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    store = open_store(url)
    store.init()
    store.close()
    app = Warren(url="memory://", store_url=url)
    task = app.task(lambda n: None, name="t", queue="q")
    recorder = next(m for m in app.middleware.middleware if isinstance(m, JobRecorder))
    ids = [task.send(n=i) for i in range(2)]
    broker = app.broker
    consumer = broker.consumer()
    consumer.consume("q", 10)
    deliveries = consumer.poll(0.0)
    assert [d.envelope.message_id for d in deliveries] == ids
    return app, recorder, deliveries


def run_of(delivery: Delivery, app: Warren) -> TaskRun:
    return TaskRun("t", delivery.envelope.message_id, 0, "q", task=app.tasks["t"],
                   envelope=delivery.envelope)


def test_a_cancelled_verdict_holds_though_the_store_went_down_after_it(
        tmp_path: Path) -> None:
    app, recorder, (first, second) = setup(tmp_path)
    try:
        project(app)  # the queued rows, as the projector records them
        assert app.jobs.cancel(first.envelope.message_id)
        recorder.admit([first, second])
        recorder._down_until = time.monotonic() + 60  # another batch found the store down
        assert recorder.skip(run_of(first, app), first) is not None
        assert recorder.skip(run_of(second, app), second) is None
    finally:
        app.close()


def test_a_verdict_is_for_its_run_epoch_only(tmp_path: Path) -> None:
    app, recorder, (first, _) = setup(tmp_path)
    try:
        project(app)
        assert app.jobs.cancel(first.envelope.message_id)
        recorder.admit([first])  # epoch 0: cancelled
        newer = Delivery(first.envelope.with_headers({H_EPOCH: 1}), "q", 99)
        # A run of epoch 1 (after `jobs retry`) is not skipped on epoch 0's verdict.
        job = app.jobs.retry(first.envelope.message_id)
        assert job.state == "queued"
        assert recorder.skip(run_of(newer, app), newer) is None
    finally:
        app.close()

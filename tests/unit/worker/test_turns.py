"""A child with one executor thread lends its consumer to that thread while it idles.

The executor then polls and runs what arrives in its own thread (no hand-over), and
keeps the consumer across quick tasks; the I/O thread takes it back from a task that
runs long (heartbeats, settlements, time limits) or when the child stops, and what the
executor polled and had not run is handed back. One thread at a time polls.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from typing import Any

import pytest

from taskwarren import Warren
from taskwarren.brokers.base import REQUEUE, Delivery
from taskwarren.worker.process import WorkerChild
from taskwarren.worker.shared import Heartbeats, KillRecord, RunningSlots
from taskwarren.worker.turns import Turn


class Polls:
    """Who polled, when, and whether two threads ever polled at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inside = 0
        self.overlaps = 0
        self.calls: list[tuple[int, float, float, int]] = []  # thread, start, end, got

    def wrap(self, poll: Any) -> Any:
        def recorded(timeout_s: float) -> list[Delivery]:
            with self.lock:
                self.inside += 1
                self.overlaps += self.inside > 1
            started = time.monotonic()
            try:
                got: list[Delivery] = poll(timeout_s)
            finally:
                with self.lock:
                    self.inside -= 1
            self.calls.append((threading.get_ident(), started, time.monotonic(), len(got)))
            return got
        return recorded


def run_child(app: Warren, monkeypatch: pytest.MonkeyPatch, polls: Polls,
              threads: int = 1, prefetch: int | None = None) -> tuple[WorkerChild, Heartbeats]:
    make_consumer = app.broker.consumer

    def consumer() -> Any:
        real = make_consumer()
        real.poll = polls.wrap(real.poll)  # type: ignore[method-assign]
        return real

    monkeypatch.setattr(app.broker, "consumer", consumer)
    beats = Heartbeats(1)
    child = WorkerChild(app, ["turns"], 0, threads, prefetch, RunningSlots(1, threads),
                        KillRecord(), grace_s=5.0, heartbeats=beats)
    return child, beats


def run_to_end(child: WorkerChild) -> int:
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        return child.run()
    finally:
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])


def stop_after(child: WorkerChild, seconds: float) -> int:
    """Run the child until a SIGTERM comes ``seconds`` from now; its exit code."""
    timer = threading.Timer(seconds, child._on_signal, (signal.SIGTERM, None))
    timer.start()
    try:
        return run_to_end(child)
    finally:
        timer.cancel()


def test_an_idle_executor_polls_and_runs_what_arrives_in_its_own_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = Warren(url="memory://")
    polls = Polls()
    ran: dict[int, int] = {}
    child: WorkerChild | None = None
    io_thread = threading.get_ident()  # run() below runs the I/O loop in this thread

    @app.task(queue="turns", name="turns.short")
    def short(n: int) -> None:
        ran[n] = threading.get_ident()
        if len(ran) == 20 and child is not None:
            child._on_signal(signal.SIGTERM, None)

    def send_later() -> None:
        for n in range(20):
            time.sleep(0.02)  # the executor idles, holding the consumer, in between
            short.send(n)

    child, beats = run_child(app, monkeypatch, polls)
    sender = threading.Thread(target=send_later)
    sender.start()
    try:
        assert run_to_end(child) == 0
    finally:
        sender.join()
        app.close()

    assert len(ran) == 20
    executor = {ident for ident in ran.values()}
    assert len(executor) == 1 and io_thread not in executor
    # Most deliveries were received by the executor itself, which then ran them.
    got_by_executor = sum(got for ident, _, _, got in polls.calls if ident in executor)
    assert got_by_executor >= 15, polls.calls
    assert polls.overlaps == 0
    assert beats.ages(time.monotonic())[0] < 5.0  # the duties ran (whoever held the consumer)


def test_while_a_task_runs_the_io_thread_has_the_consumer_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = Warren(url="memory://")
    polls = Polls()
    window: list[float] = []
    child: WorkerChild | None = None
    io_thread = threading.get_ident()

    @app.task(queue="turns", name="turns.long")
    def long(n: int) -> None:
        window.append(time.monotonic())
        time.sleep(1.5)
        window.append(time.monotonic())
        if child is not None:
            child._on_signal(signal.SIGTERM, None)

    long.send(1)
    child, _ = run_child(app, monkeypatch, polls)
    try:
        assert run_to_end(child) == 0
    finally:
        app.close()

    start, end = window
    # Every poll that overlaps the task is the I/O thread's, and there is one.
    during = [c for c in polls.calls if c[1] < end and c[2] > start]
    assert during and all(ident == io_thread for ident, _, _, _ in during), polls.calls
    assert polls.overlaps == 0


def test_a_stop_reaches_an_executor_holding_the_consumer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = Warren(url="memory://")

    @app.task(queue="turns", name="turns.never")
    def never(n: int) -> None:
        raise AssertionError("nothing was sent")

    polls = Polls()
    child, _ = run_child(app, monkeypatch, polls)
    started = time.monotonic()
    try:
        assert stop_after(child, 0.5) == 0
    finally:
        app.close()
    assert time.monotonic() - started < 3.0
    # The executor held the consumer while idle: it was polling when the stop came.
    assert any(ident != threading.get_ident() for ident, _, _, _ in polls.calls)


def test_deliveries_handed_to_an_executor_that_asked_cancel_its_ask() -> None:
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    turn = Turn(inbox)
    assert turn.ask()  # idle, inbox empty
    turn.hand([object()])  # type: ignore[list-item]
    assert not turn.lend()  # it has work: the I/O thread keeps the consumer
    inbox.get()
    assert not turn.lend()  # still not: it never asked again (it is running that one)
    assert turn.ask()
    assert turn.lend()
    assert isinstance(inbox.get(), Turn)
    assert not turn.lend()  # lent once per ask


def test_two_executor_threads_keep_the_hand_over(monkeypatch: pytest.MonkeyPatch) -> None:
    app = Warren(url="memory://")
    polls = Polls()
    done = threading.Event()
    child: WorkerChild | None = None
    io_thread = threading.get_ident()

    @app.task(queue="turns", name="turns.pair")
    def pair(n: int) -> None:
        if n == 1 and child is not None:
            child._on_signal(signal.SIGTERM, None)
            done.set()

    pair.send(0)
    pair.send(1)
    child, _ = run_child(app, monkeypatch, polls, threads=2)
    try:
        assert run_to_end(child) == 0
    finally:
        app.close()
    assert done.is_set()
    assert {ident for ident, _, _, _ in polls.calls} == {io_thread}


def test_an_idle_executor_holding_the_consumer_does_the_duties(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = Warren(url="memory://")

    @app.task(queue="turns", name="turns.idle")
    def idle(n: int) -> None:
        raise AssertionError("nothing was sent")

    polls = Polls()
    child, beats = run_child(app, monkeypatch, polls)
    beaters: set[int] = set()
    beat = beats.beat
    monkeypatch.setattr(beats, "beat",
                        lambda *a: (beaters.add(threading.get_ident()), beat(*a)))
    try:
        assert stop_after(child, 2.5) == 0
    finally:
        app.close()
    # Idle for 2.5 s: the executor held the consumer, its polls ran out, and it beat.
    assert beaters - {threading.get_ident()}, beaters


def test_what_a_lent_poll_raises_is_raised_in_the_io_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = Warren(url="memory://")

    @app.task(queue="turns", name="turns.none")
    def none(n: int) -> None:
        raise AssertionError("nothing was sent")

    io_thread = threading.get_ident()

    class FailingOffTheIoThread(Polls):
        def wrap(self, poll: Any) -> Any:
            def failing(timeout_s: float) -> list[Delivery]:
                if threading.get_ident() != io_thread:
                    raise RuntimeError("the broker library broke")
                got: list[Delivery] = poll(timeout_s)
                return got
            return failing

    child, _ = run_child(app, monkeypatch, FailingOffTheIoThread())
    try:
        with pytest.raises(RuntimeError, match="broke"):
            run_to_end(child)  # the I/O thread fails, as if its own poll had raised
    finally:
        app.close()
    assert not child._broken  # the executor thread lives on (the child exits anyway)


def test_a_busy_executor_keeps_the_consumer_and_runs_a_batch_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Quick tasks queued together: the executor polls and runs them all; the I/O thread,
    once it has lent the consumer, polls nothing (no turns at the GIL per batch)."""
    app = Warren(url="memory://")
    polls = Polls()
    ran: list[int] = []
    child: WorkerChild | None = None
    io_thread = threading.get_ident()

    @app.task(queue="turns", name="turns.quick")
    def quick(n: int) -> None:
        ran.append(n)
        if len(ran) == 200 and child is not None:
            child._on_signal(signal.SIGTERM, None)

    quick.send_many([{"n": n} for n in range(200)])
    child, _ = run_child(app, monkeypatch, polls, prefetch=50)
    try:
        assert run_to_end(child) == 0
    finally:
        app.close()
    assert sorted(ran) == list(range(200))
    lent = [c for c in polls.calls if c[0] != io_thread]
    assert sum(got for _, _, _, got in lent) >= 150, polls.calls
    first_lent = min(start for _, start, _, _ in lent)
    last_run = max(end for _, _, end, got in lent if got)
    assert not [c for c in polls.calls if c[0] == io_thread and first_lent < c[1] < last_run]
    assert polls.overlaps == 0


def test_a_stop_during_a_long_task_hands_back_what_the_executor_polled_and_had_not_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = Warren(url="memory://")
    ran: list[int] = []
    child: WorkerChild | None = None
    io_thread = threading.get_ident()

    @app.task(queue="turns", name="turns.first_long")
    def first_long(n: int) -> None:
        ran.append(n)
        if n == 0:
            assert child is not None
            child._on_signal(signal.SIGTERM, None)  # stop while this one runs
            time.sleep(0.5)

    first_long.send_many([{"n": n} for n in range(5)])
    handed_back: list[Any] = []

    class Recording(Polls):
        def wrap(self, poll: Any) -> Any:
            consumer = poll.__self__
            settle = consumer.settle

            def recorded(delivery: Delivery, action: Any) -> None:
                if action is REQUEUE:
                    handed_back.append(delivery.envelope.message_id)
                settle(delivery, action)

            consumer.settle = recorded
            return super().wrap(poll)

    polls = Recording()
    child, _ = run_child(app, monkeypatch, polls, prefetch=10)
    try:
        assert run_to_end(child) == 0
        assert ran == [0]
        assert len(handed_back) == 4  # by the executor, unstarted: not left to the close
        # The four polled with it were handed back unstarted: all still there.
        stats = app.broker.stats("turns")  # type: ignore[attr-defined]
        assert (stats.ready, stats.unacked) == (4, 0)
        # All five came in one poll of the executor's, which ran the first.
        assert [got for ident, _, _, got in polls.calls if got] == [5]
        assert [ident for ident, _, _, got in polls.calls if got] != [io_thread]
    finally:
        app.close()


def test_what_a_lent_run_raises_ends_the_loan_and_the_executor_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fault of the executor's own (not of the task, not of the poll) ends its thread,
    with the consumer back home; the child, its executor lost, is replaced."""
    app = Warren(url="memory://")

    @app.task(queue="turns", name="turns.fine")
    def fine(n: int) -> None:
        """Runs; the fault is in the executor's settling after it."""

    polls = Polls()
    child, _ = run_child(app, monkeypatch, polls)
    process = child._process

    def faulty(consumer: Any, delivery: Delivery, thread_index: int) -> bool:
        process(consumer, delivery, thread_index)
        raise RuntimeError("the executor broke")

    monkeypatch.setattr(child, "_process", faulty)
    fine.send(1)
    try:
        assert run_to_end(child) == 3  # EXIT_REPLACE: replaced, no death counted
    finally:
        app.close()
    assert child._turn is not None and child._turn.state == "home"
    assert child._broken


def test_the_duties_come_after_what_was_run_never_between_a_poll_and_its_tasks() -> None:
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    turn = Turn(inbox)
    assert turn.ask() and turn.lend()
    assert inbox.get() is turn
    steps: list[str] = []
    batches = [["a", "b"], [], ["c"]]

    def receive() -> list[Any]:
        steps.append("poll")
        return batches.pop(0) if batches else []

    def run(delivery: Any) -> bool:
        steps.append(f"run {delivery}")
        return True

    def leaving() -> bool:
        return not batches and steps[-1:] == ["run c"]

    assert turn.use(receive, lambda: steps.append("duties"), run, leaving)
    assert steps == ["duties", "poll", "run a", "run b", "duties", "poll", "duties", "poll",
                     "run c"]
    assert turn.state == "home"

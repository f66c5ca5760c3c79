"""The I/O thread hands deliveries to the executors at the last moment before it blocks.

An executor woken while the I/O thread still runs Python waits for the GIL until that
thread blocks. So the hand-over comes right before the next poll, and the loop's own
duties (heartbeat, presence, time limits, prefetch) wait while deliveries are handed
over: they run on the next pass. These tests record the order; they time nothing.
"""

from __future__ import annotations

import signal
from typing import Any

import pytest

from taskwarren import Warren
from taskwarren.brokers.base import Delivery
from taskwarren.worker.process import WorkerChild
from taskwarren.worker.shared import Heartbeats, KillRecord, RunningSlots


class Recorder:
    """The I/O thread's steps, in order: ``poll``, ``put`` and ``beat``."""

    def __init__(self) -> None:
        self.steps: list[str] = []


def test_deliveries_are_handed_over_just_before_the_io_thread_polls_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = Warren(url="memory://")
    io = Recorder()
    child: WorkerChild | None = None

    ran: list[int] = []

    @app.task(queue="handoff", name="handoff.note")
    def note(n: int) -> None:
        ran.append(n)
        if n == 2 and child is not None:
            child._on_signal(signal.SIGTERM, None)  # done: stop as a SIGTERM would

    for n in range(3):
        note.send(n)

    make_consumer = app.broker.consumer

    def consumer() -> Any:
        real = make_consumer()
        poll = real.poll

        def recorded_poll(timeout_s: float) -> list[Delivery]:
            io.steps.append("poll")
            got = poll(timeout_s)
            if got:
                io.steps.append("got")
            return got

        real.poll = recorded_poll  # type: ignore[method-assign]
        return real

    monkeypatch.setattr(app.broker, "consumer", consumer)
    beats = Heartbeats(1)
    beat = beats.beat
    monkeypatch.setattr(beats, "beat", lambda *a: (io.steps.append("beat"), beat(*a)))
    # Two executor threads: with one, an idle executor polls itself (test_turns.py).
    child = WorkerChild(app, ["handoff"], 0, 2, None, RunningSlots(1, 2), KillRecord(),
                        grace_s=5.0, heartbeats=beats)
    inbox = child._inbox
    put = inbox.put

    class RecordedInbox:
        def put(self, item: Delivery | None) -> None:
            if item is not None:
                io.steps.append("put")
            put(item)

        def get(self) -> Delivery | None:
            return inbox.get()

        def empty(self) -> bool:
            return inbox.empty()

    child._inbox = RecordedInbox()  # type: ignore[assignment]
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        assert child.run() == 0
    finally:
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
        app.close()

    steps = io.steps
    # Each of the three at least; one the stop handed back unstarted (n == 2 stops the
    # child while the other thread may be taking the next) can come round again.
    assert steps.count("put") >= 3, steps
    assert len(ran) == len(set(ran)), ran  # handed back unstarted, never run twice
    after_puts = [steps[i + 1] for i, step in enumerate(steps) if step == "put"]
    assert set(after_puts) <= {"put", "poll"}, steps
    # Received -> handed over, with no duty in between; the duties still ran.
    after_got = [steps[i + 1] for i, step in enumerate(steps) if step == "got"]
    assert set(after_got) <= {"put"}, steps
    assert "beat" in steps, steps

"""Presence: a child keeps announcing itself through transient broker errors."""

from __future__ import annotations

import os
import types
from typing import Any

import pytest
import structlog

from taskwarren import Warren
from taskwarren.errors import BrokerConnectionError, NotSupportedError
from taskwarren.worker import presence
from taskwarren.worker.presence import ANNOUNCE_INTERVAL_S
from taskwarren.worker.process import WorkerChild
from taskwarren.worker.shared import KillRecord, RunningSlots


class Clock:
    """``time`` as the worker child sees it, moved on by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


def child_and_consumer(monkeypatch: pytest.MonkeyPatch, fail: list[Exception]) -> Any:
    app = Warren(url="memory://")
    clock = Clock()
    monkeypatch.setattr(presence, "time", types.SimpleNamespace(
        monotonic=clock.monotonic, time=clock.time))
    child = WorkerChild(app, ["q"], 0, 1, None, RunningSlots(1, 1), KillRecord(), grace_s=1.0)
    consumer = app.broker.consumer()
    announce = consumer.announce

    def flaky(info: dict[str, Any]) -> None:
        if fail:
            raise fail.pop(0)
        announce(info)

    monkeypatch.setattr(consumer, "announce", flaky)
    return app, child, consumer, clock


def test_a_transient_broker_error_does_not_stop_a_child_announcing_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, child, consumer, clock = child_and_consumer(
        monkeypatch, [BrokerConnectionError("link lost " + "x" * 100_000)])
    with structlog.testing.capture_logs() as logs:
        child.presence.announce(consumer)
    assert app.broker.presence(0) == []
    (failed,) = [e for e in logs if e["log_level"] != "debug"]
    assert len(str(failed)) < 1000  # the error's text is bounded in the log
    clock.now += ANNOUNCE_INTERVAL_S
    child.presence.announce(consumer)
    assert [p["pid"] for p in app.broker.presence(0)] == [os.getpid()]
    consumer.close()


def test_a_broker_without_presence_is_not_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    app, child, consumer, clock = child_and_consumer(
        monkeypatch, [NotSupportedError("no presence here")])
    child.presence.announce(consumer)
    clock.now += 10 * ANNOUNCE_INTERVAL_S
    child.presence.announce(consumer)
    assert app.broker.presence(0) == []
    consumer.close()

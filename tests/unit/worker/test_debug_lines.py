"""The per-task debug lines are written when debug is on, and cost no logger when off."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from taskwarren import Warren
from taskwarren.brokers.base import Delivery
from taskwarren.logs import debug_enabled
from taskwarren.task import BoundTask, SendOptions
from taskwarren.worker.execute import Executor

LIFECYCLE = ["task.received", "task.started", "task.succeeded"]


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def _run_one_task() -> list[str]:
    app = Warren(url="memory://")
    ran: list[int] = []

    @app.task(queue="debuglines", name="debuglines.add")
    def add(n: int) -> None:
        ran.append(n)

    envelope = BoundTask(add, SendOptions())._envelope(add.encode_call((1,), {}), None)
    delivery = Delivery(envelope, "debuglines", 1, False)
    with capture_logs() as logs:
        result = Executor(app.tasks, app.settings.max_message_bytes, app.middleware).run(delivery)
    app.close()
    assert result.outcome == "succeeded" and ran == [1]
    return [e["event"] for e in logs if e["log_level"] == "debug"]


def test_a_task_logs_received_started_and_succeeded_at_debug_level() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    assert debug_enabled()
    assert _run_one_task() == LIFECYCLE


def test_at_info_level_no_debug_line_is_written() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    assert not debug_enabled()
    assert _run_one_task() == []


def test_debug_lines_follow_a_configuration_an_application_makes_later() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    assert not debug_enabled()
    structlog.configure(wrapper_class=structlog.BoundLogger)  # cannot say: counts as on
    assert debug_enabled()
    assert _run_one_task() == LIFECYCLE

"""The W3C traceparent a send carries in tw-trace, and what a worker makes of a hostile one."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.contextvars import get_contextvars
from structlog.testing import capture_logs

from taskwarren import Warren
from taskwarren.message import H_TRACE, Envelope
from taskwarren.middleware import Middleware, TaskRun
from taskwarren.testing import join
from taskwarren.tracing import (
    TraceParent,
    current_traceparent,
    parse_traceparent,
    traceparent_scope,
)

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_traceparent_is_read_field_by_field() -> None:
    parsed = parse_traceparent(VALID)
    assert parsed == TraceParent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1)
    assert parsed.sampled and str(parsed) == VALID


def test_a_later_version_is_read_as_version_00_and_its_extra_fields_dropped() -> None:
    parsed = parse_traceparent("cc" + VALID[2:] + "-what-comes-later")
    assert parsed is not None and str(parsed) == VALID


@pytest.mark.parametrize("value", [
    None, 7, b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "", "garbage",
    VALID.upper(),                                             # upper-case hex is invalid
    VALID + "-extra",                                          # version 00 is exactly 55
    "ff" + VALID[2:],                                          # version ff is invalid
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
    "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",  # misplaced dash
    "cc" + VALID[2:] + "x",                                    # a later version: "-" next
    VALID + "\n",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" + "-x" * 10_000,
    ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"],
])
def test_anything_else_is_no_traceparent(value: Any) -> None:
    assert parse_traceparent(value) is None


class Headers(Middleware):
    """Keeps the trace header of every message sent."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def before_enqueue(self, envelope: Envelope) -> None:
        self.sent.append(envelope.headers.get(H_TRACE))


def test_a_send_outside_any_trace_carries_no_trace_header() -> None:
    headers = Headers()
    app = Warren(url="memory://", middleware=[headers])
    seen: list[Any] = []

    @app.task(queue="trace.none")
    def record() -> None:
        seen.append(current_traceparent())

    record.send()
    join(app)
    assert headers.sent == [None] and seen == [None]
    app.close()


def test_an_event_carries_the_trace_like_a_task_call() -> None:
    headers = Headers()
    app = Warren(url="memory://", middleware=[headers])

    @app.task(queue="trace.events", subscribe=["thing.*"])
    def on_thing(event: dict[str, int]) -> None:
        pass

    app.bind_subscriptions()
    with traceparent_scope(VALID):
        app.publish_event("thing.done", {"n": 1})
    assert headers.sent == [VALID]
    app.close()


def test_a_send_in_a_scope_carries_it_and_the_task_runs_in_it_and_passes_it_on() -> None:
    app = Warren(url="memory://")
    seen: list[tuple[str, str | None]] = []

    @app.task(queue="trace.scope")
    def child() -> None:
        seen.append(("child", current_traceparent()))

    @app.task(queue="trace.scope")
    def parent() -> None:
        seen.append(("parent", current_traceparent()))
        child.send()

    with traceparent_scope(VALID) as scope:
        assert scope is not None and current_traceparent() == VALID
        parent.send()
    assert current_traceparent() is None
    join(app)
    assert seen == [("parent", VALID), ("child", VALID)]
    assert current_traceparent() is None, "the worker left the task's trace context"
    app.close()


def test_an_invalid_scope_is_no_trace() -> None:
    with traceparent_scope("not-a-traceparent") as scope:
        assert scope is None and current_traceparent() is None


@pytest.mark.parametrize("hostile", [
    "00-" + "A" * 32 + "-00f067aa0ba902b7-01",
    "x" * 50_000,
    {"nested": ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]},
    12345,
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\x1b[31mRED",
])
def test_a_malformed_trace_header_is_ignored_never_fatal_never_logged(hostile: Any) -> None:
    app = Warren(url="memory://")
    seen: list[str | None] = []

    @app.task(queue="trace.hostile")
    def victim() -> None:
        seen.append(current_traceparent())
        raise RuntimeError("fails, so that the failure is logged with its context")

    envelope = victim.options()._envelope(victim.encode_call((), {}), None)
    envelope.headers[H_TRACE] = hostile
    app.broker.publish("trace.hostile", [envelope])
    with capture_logs() as logs:
        results = join(app, fail_on_error=False, run_delayed=False)
    assert [r.outcome for r in results] == ["dead_lettered"]
    assert seen == [None]
    text = repr(logs)
    assert logs and "trace_id" not in text and "trace_id" not in get_contextvars()
    if not isinstance(hostile, int):
        assert str(hostile)[:20] not in text
    app.close()


def test_the_task_s_log_lines_carry_the_trace_id_of_its_message() -> None:
    app = Warren(url="memory://")

    @app.task(queue="trace.logs")
    def failing() -> None:
        raise RuntimeError("boom")

    with traceparent_scope(VALID):
        failing.send()
    bound: list[dict[str, Any]] = []

    class Peek(Middleware):
        def after_process(self, run: TaskRun) -> None:
            bound.append(get_contextvars())

    app.add_middleware(Peek())
    join(app, fail_on_error=False, run_delayed=False)
    assert bound[0]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert "trace_id" not in get_contextvars()
    app.close()

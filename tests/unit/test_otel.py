"""OpenTelemetry spans through the public middleware: one trace from send to run.

On the in-memory broker and on the embedded SQLite broker, its outbox and relay
(the RabbitMQ runs are in tests/integration/test_tracing_rabbitmq.py).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from taskwarren import Warren
from taskwarren.message import H_TRACE
from taskwarren.otel import OpenTelemetry
from taskwarren.relays import relay_for
from taskwarren.testing import join
from taskwarren.tracing import parse_traceparent
from tests.support.spans import Tracing, run_deliveries, sqlite_in_transaction, tracing

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def spans() -> Iterator[Tracing]:
    yield from tracing()


def test_send_and_run_are_one_trace_and_a_send_from_the_task_continues_it(
        spans: Tracing) -> None:
    app = Warren(url="memory://")
    app.add_middleware(OpenTelemetry(app, tracer_provider=spans.provider))

    @app.task(queue="otel.child", name="otel.child")
    def child() -> None:
        pass

    @app.task(queue="otel.parent", name="otel.parent")
    def parent(n: int) -> None:
        child.send()

    tracer = spans.provider.get_tracer("the-app")
    with tracer.start_as_current_span("request") as request:
        task_id = parent.send(1)
    join(app)
    app.close()

    trace_id = request.get_span_context().trace_id
    assert {s.context.trace_id for s in spans.spans()} == {trace_id}
    create = spans.named("create otel.parent")
    process = spans.named("process otel.parent")
    create_child = spans.named("create otel.child")
    process_child = spans.named("process otel.child")
    assert create.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    assert create.parent is not None and create.parent.span_id == request.get_span_context().span_id
    assert process.parent is not None and process.parent.span_id == create.context.span_id
    assert create_child.parent is not None
    assert create_child.parent.span_id == process.context.span_id
    assert process_child.parent is not None
    assert process_child.parent.span_id == create_child.context.span_id
    assert process.attributes is not None
    assert dict(process.attributes) == {
        "messaging.system": "taskwarren.memory",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.message.id": task_id,
        "messaging.message.body.size": len(b'{"n":1}'),
        "messaging.destination.name": "otel.parent",
        "taskwarren.task": "otel.parent",
        "taskwarren.attempt": 0,
        "taskwarren.redelivered": False,
        "taskwarren.outcome": "succeeded",
    }
    assert process.status.status_code is StatusCode.UNSET


def test_a_failing_task_records_its_exception_on_its_span(spans: Tracing) -> None:
    app = Warren(url="memory://", middleware=[OpenTelemetry(tracer_provider=spans.provider)])

    @app.task(queue="otel.fail", name="otel.fail")
    def fail() -> None:
        raise LookupError("no such customer")

    fail.send()
    join(app, fail_on_error=False, run_delayed=False)
    app.close()
    process = spans.named("process otel.fail")
    assert process.status.status_code is StatusCode.ERROR
    assert process.status.description == "LookupError: no such customer"
    assert process.attributes is not None
    assert process.attributes["error.type"] == "LookupError"
    assert process.attributes["taskwarren.outcome"] == "dead_lettered"
    (event,) = process.events
    assert event.name == "exception" and event.attributes is not None
    assert event.attributes["exception.type"] == "LookupError"
    assert event.attributes["exception.message"] == "no such customer"
    assert "raise LookupError" in str(event.attributes["exception.stacktrace"])


@pytest.mark.parametrize("hostile", ["00-" + "Z" * 32 + "-00f067aa0ba902b7-01", "x" * 10_000, 7])
def test_a_malformed_trace_header_starts_a_new_trace(spans: Tracing, hostile: object) -> None:
    app = Warren(url="memory://", middleware=[OpenTelemetry(tracer_provider=spans.provider)])

    @app.task(queue="otel.hostile", name="otel.hostile")
    def victim() -> None:
        pass

    envelope = victim.options()._envelope(victim.encode_call((), {}), None)
    envelope.headers[H_TRACE] = hostile  # type: ignore[assignment]
    app.broker.publish("otel.hostile", [envelope])
    assert [r.outcome for r in join(app)] == ["succeeded"]
    app.close()
    process = spans.named("process otel.hostile")
    assert process.parent is None and process.context.is_valid


def test_on_the_embedded_broker_one_trace_spans_send_relay_and_run(
        spans: Tracing, tmp_path: Path) -> None:
    path = tmp_path / "tw.db"
    app = Warren(url=f"sqlite:///{path}", jobs=False)
    app.add_middleware(OpenTelemetry(app, tracer_provider=spans.provider))

    @app.task(queue="otel.outbox", name="otel.outbox")
    def work(n: int) -> None:
        pass

    relay = relay_for(app)  # makes the embedded store's tables
    conn = sqlite_in_transaction(str(path))
    tracer = spans.provider.get_tracer("the-app")
    with tracer.start_as_current_span("request") as request:
        work.options(db=conn).send(7)
    conn.commit()
    conn.close()
    assert relay.relay_once() == 1
    relay.store.close()
    assert [r.outcome for r in run_deliveries(app, "otel.outbox", 1)] == ["succeeded"]
    app.close()

    create = spans.named("create otel.outbox")
    send = spans.named("send otel.outbox")
    process = spans.named("process otel.outbox")
    assert {s.context.trace_id for s in spans.spans()} == {request.get_span_context().trace_id}
    assert send.kind is SpanKind.PRODUCER and send.parent is not None
    assert send.parent.span_id == create.context.span_id
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert send.attributes is not None
    assert send.attributes["messaging.system"] == "taskwarren.sqlite"
    assert send.attributes["messaging.operation.type"] == "send"


def test_the_relay_carries_the_header_stored_with_the_row_without_opentelemetry(
        tmp_path: Path) -> None:
    from taskwarren.tracing import current_traceparent, traceparent_scope

    path = tmp_path / "tw.db"
    app = Warren(url=f"sqlite:///{path}", jobs=False)
    seen: list[str | None] = []

    @app.task(queue="otel.plain", name="otel.plain")
    def work() -> None:
        seen.append(current_traceparent())

    relay = relay_for(app)
    conn = sqlite_in_transaction(str(path))
    header = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with traceparent_scope(header):
        work.options(db=conn).send()
    conn.commit()
    stored = conn.execute("SELECT headers FROM taskwarren_outbox").fetchone()[0]
    conn.close()
    assert header in stored
    assert relay.relay_once() == 1
    relay.store.close()
    run_deliveries(app, "otel.plain", 1)
    app.close()
    assert seen == [header]
    assert parse_traceparent(seen[0]) is not None


BLOCKED = """
import sys

class NoOpenTelemetry:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError(f"{name} is not installed")
        return None

sys.meta_path.insert(0, NoOpenTelemetry())
from taskwarren import Warren
from taskwarren.testing import join
from taskwarren.tracing import traceparent_scope

app = Warren(url="memory://")
ran = []

@app.task(queue="plain")
def plain(n: int) -> None:
    ran.append(n)

with traceparent_scope("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"):
    plain.send(1)
join(app)
assert ran == [1], ran
assert not any(m.startswith("opentelemetry") for m in sys.modules)
try:
    import taskwarren.otel
except ImportError as exc:
    print("otel:", exc)
"""


def test_without_the_extra_taskwarren_imports_and_runs_unchanged() -> None:
    out = subprocess.run([sys.executable, "-c", BLOCKED], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "otel: opentelemetry is not installed" in out.stdout


def test_a_relay_publish_that_fails_is_an_error_on_its_span_and_the_row_stays(
        spans: Tracing, tmp_path: Path) -> None:
    from taskwarren.errors import PublishError

    path = tmp_path / "tw.db"
    app = Warren(url=f"sqlite:///{path}", jobs=False)
    app.add_middleware(OpenTelemetry(app, tracer_provider=spans.provider))
    work = app.task(lambda: None, name="otel.refused", queue="otel.refused")
    relay = relay_for(app)
    conn = sqlite_in_transaction(str(path))
    work.options(db=conn).send()
    conn.commit()
    conn.close()

    def refuse(*args: object) -> None:
        raise PublishError("the broker said no")

    app.broker.publish = refuse  # type: ignore[method-assign]
    assert relay.relay_once() == 1
    assert relay.relayed == 0 and relay.store.counts()[0] == 1  # type: ignore[attr-defined]
    relay.store.close()
    app.close()
    send = spans.named("send otel.refused")
    assert send.status.status_code is StatusCode.ERROR
    assert send.attributes is not None and send.attributes["error.type"] == "PublishError"


def test_a_run_the_worker_settled_itself_still_gets_its_span(spans: Tracing) -> None:
    from taskwarren.errors import TimeLimitExceeded
    from taskwarren.middleware import TaskRun

    otel = OpenTelemetry(tracer_provider=spans.provider)
    app = Warren(url="memory://")
    work = app.task(lambda: None, name="otel.hard", queue="otel.hard")
    envelope = work.options()._envelope(work.encode_call((), {}), None)
    envelope.headers[H_TRACE] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    # What the worker's I/O thread reports of a run past its hard time limit.
    otel.after_process(TaskRun("otel.hard", envelope.message_id, 0, "otel.hard", task=work,
                               exception=TimeLimitExceeded("past 1s"), envelope=envelope,
                               outcome="dead_lettered", settled_early=True))
    app.close()
    process = spans.named("process otel.hard")
    assert f"{process.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert process.status.status_code is StatusCode.ERROR
    assert process.attributes is not None
    assert process.attributes["error.type"] == "TimeLimitExceeded"

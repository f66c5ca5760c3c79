"""One trace from send to run on RabbitMQ: direct sends, the outbox and its relay, and a
real ``taskwarren worker`` pool."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from taskwarren import Warren
from taskwarren.otel import OpenTelemetry
from taskwarren.relays import relay_for
from taskwarren.tracing import traceparent_scope
from tests.integration import twtracing
from tests.support.spans import Tracing, run_deliveries, sqlite_in_transaction, tracing
from tests.support.workers import Pool, wait_until

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def spans() -> Iterator[Tracing]:
    yield from tracing()


def test_a_direct_send_and_its_run_are_one_trace_with_rabbitmq_attributes(
        spans: Tracing, rabbit_url: str, queue: str) -> None:
    app = Warren(url=rabbit_url)
    app.add_middleware(OpenTelemetry(app, tracer_provider=spans.provider))
    work = app.task(lambda n: None, name="tracing.direct", queue=queue)
    with spans.provider.get_tracer("the-app").start_as_current_span("request") as request:
        task_id = work.send(3)
    assert [r.outcome for r in run_deliveries(app, queue, 1)] == ["succeeded"]
    app.close()
    create, process = spans.named(f"create {queue}"), spans.named(f"process {queue}")
    assert create.context.trace_id == process.context.trace_id == \
        request.get_span_context().trace_id
    assert process.parent is not None and process.parent.span_id == create.context.span_id
    assert process.kind is SpanKind.CONSUMER
    assert process.attributes is not None
    assert process.attributes["messaging.system"] == "rabbitmq"
    assert process.attributes["messaging.destination.name"] == "taskwarren"
    assert process.attributes["messaging.rabbitmq.destination.routing_key"] == queue
    assert process.attributes["messaging.message.id"] == task_id


def test_through_the_outbox_one_trace_spans_send_relay_and_run(
        spans: Tracing, rabbit_url: str, queue: str, tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    app = Warren(url=rabbit_url, store_url=f"sqlite:///{store}", jobs=False)
    app.add_middleware(OpenTelemetry(app, tracer_provider=spans.provider))
    work = app.task(lambda n: None, name="tracing.outbox", queue=queue)
    from taskwarren.store import open_store

    own = open_store(f"sqlite:///{store}")
    own.init()
    own.close()
    relay = relay_for(app)
    conn = sqlite_in_transaction(str(store))
    with spans.provider.get_tracer("the-app").start_as_current_span("request") as request:
        work.options(db=conn).send(4)
    conn.commit()
    conn.close()
    assert relay.relay_once() == 1
    relay.store.close()
    assert [r.outcome for r in run_deliveries(app, queue, 1)] == ["succeeded"]
    app.close()
    create = spans.named(f"create {queue}")
    send = spans.named(f"send {queue}")
    process = spans.named(f"process {queue}")
    assert {create.context.trace_id, send.context.trace_id, process.context.trace_id} == \
        {request.get_span_context().trace_id}
    assert send.parent is not None and send.parent.span_id == create.context.span_id
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert send.status.status_code is StatusCode.UNSET


def test_a_worker_pool_continues_the_trace_and_records_a_failure_on_its_span(
        rabbit_url: str, queue: str, tmp_path: Path) -> None:
    ledger, span_file = tmp_path / "ledger.txt", tmp_path / "spans.jsonl"
    pool = Pool("tests.integration.twtracing", [queue], rabbit_url, concurrency=1,
                extra=["--middleware", "tests.integration.twtracing:otel"],
                env={"TW_SPANS_FILE": str(span_file)}, log_path=tmp_path / "w.log")
    header = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    try:
        with traceparent_scope(header):
            twtracing.traced.options(queue=queue).send(1, str(ledger))
            twtracing.traced.options(queue=queue).send(2, str(ledger), fail=True)
        wait_until(lambda: span_file.exists() and len(span_file.read_text().splitlines()) >= 2,
                   60, what="two process spans")
        assert pool.stop() == 0
    finally:
        pool.kill()
    assert sorted(ledger.read_text().splitlines()) == [f"1 {header}", f"2 {header}"]
    recorded = [json.loads(line) for line in span_file.read_text().splitlines()]
    by_task = {s["attributes"]["messaging.message.body.size"]: s for s in recorded}
    assert {s["name"] for s in recorded} == {f"process {queue}"}
    for span in recorded:
        assert span["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
        assert span["parent_id"] == "b7ad6b7169203331"
    failed = [s for s in recorded if s["status"] == "ERROR"]
    assert len(failed) == 1 and failed[0]["events"] == ["exception"]
    assert failed[0]["attributes"]["error.type"] == "ValueError"
    assert len(by_task) == 2

"""OpenTelemetry SDK set-up for tests: a private tracer provider and its in-memory spans."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from taskwarren import Warren
from taskwarren.brokers.base import Delivery
from taskwarren.worker.execute import Executor, Result


@dataclass
class Tracing:
    """A tracer provider that keeps every span it ends."""

    provider: TracerProvider
    exporter: InMemorySpanExporter

    def spans(self) -> list[ReadableSpan]:
        """The spans ended so far, in the order they ended."""
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> ReadableSpan:
        """The one span called ``name``."""
        found = [s for s in self.spans() if s.name == name]
        assert len(found) == 1, [s.name for s in self.spans()]
        return found[0]


def tracing() -> Iterator[Tracing]:
    """A fresh provider (never the global one: the SDK lets that be set once)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider, exporter)
    provider.shutdown()


def run_deliveries(app: Warren, queue: str, count: int, timeout_s: float = 30.0) -> list[Result]:
    """Consume ``count`` deliveries of ``queue`` from ``app``'s broker and run each as a
    worker child does (the executor decides, the consumer settles)."""
    executor = Executor(app.tasks, app.settings.max_message_bytes, app.middleware)
    consumer = app.broker.consumer()
    consumer.consume(queue, 10)
    results: list[Result] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(results) < count:
            assert time.monotonic() < deadline, f"{len(results)} of {count} deliveries came"
            deliveries: Sequence[Delivery] = consumer.poll(0.5)
            for delivery in deliveries:
                result = executor.run(delivery)
                consumer.settle(delivery, result.action)
                results.append(result)
    finally:
        consumer.close()
    return results


def sqlite_in_transaction(path: str) -> sqlite3.Connection:
    """An application's connection to the SQLite file ``path``, a transaction open."""
    conn = sqlite3.connect(path, timeout=30)
    conn.execute("BEGIN")
    return conn

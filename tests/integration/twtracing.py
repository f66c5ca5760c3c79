"""Tasks and span export for the tracing tests' real worker pools.

``--middleware tests.integration.twtracing:otel`` records spans in each worker child
and writes every ended span as a JSON line to the file ``TW_SPANS_FILE`` names (one
O_APPEND write per span: children write concurrently).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from taskwarren import task
from taskwarren.otel import OpenTelemetry
from taskwarren.tracing import current_traceparent


class FileExporter(SpanExporter):
    """Appends each span as one JSON line."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        fd = os.open(os.environ["TW_SPANS_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            for span in spans:
                line = {"name": span.name, "trace_id": f"{span.context.trace_id:032x}",
                        "span_id": f"{span.context.span_id:016x}",
                        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                        "status": span.status.status_code.name,
                        "events": [e.name for e in span.events],
                        "attributes": dict(span.attributes or {})}
                os.write(fd, (json.dumps(line) + "\n").encode())
        finally:
            os.close(fd)
        return SpanExportResult.SUCCESS


_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
otel = OpenTelemetry(tracer_provider=_provider)


@task(queue="twtracing-default")
def traced(n: int, ledger: str, fail: bool = False) -> None:
    """Write ``n`` and the trace context it runs in to ``ledger``; fail if asked."""
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{n} {current_traceparent()}\n".encode())
    finally:
        os.close(fd)
    if fail:
        raise ValueError(f"task {n} failed on purpose")

"""OpenTelemetry spans for sends, relays and runs: the ``taskwarren[otel]`` extra.

``app.add_middleware(OpenTelemetry(app))`` (or ``taskwarren worker --middleware
taskwarren.otel:OpenTelemetry``) records, with the messaging semantic conventions:

- ``create <queue>`` (PRODUCER) for each message sent, a child of the current span; its
  context goes into the message's ``tw-trace`` header (W3C ``traceparent``). It ends
  at once: it marks the message's birth, in the sender's transaction when the message
  goes through the outbox.
- ``send <queue>`` (PRODUCER) for each outbox message a relay publishes, from the
  publish to the broker's confirm, a child of the ``create`` span; the header then
  carries the relay's span.
- ``process <queue>`` (CONSUMER) for each delivery a worker runs, a child of the span
  in its header; it is the current span while the task runs (the task's own spans and
  sends are its children), and records what the task raised.

Only ``opentelemetry-api`` is needed; an application chooses its SDK and exporter.
Nothing else in taskwarren imports this module: without the extra, taskwarren runs
unchanged.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from taskwarren.message import H_TRACE, MAX_ECHO_CHARS, Envelope, clip
from taskwarren.middleware.base import EVENTS_QUEUE, UNKNOWN_TASK, Middleware, TaskRun, describe
from taskwarren.middleware.tracing import trace_parent
from taskwarren.tracing import TraceParent, parse_traceparent

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from taskwarren.app import Warren

__all__ = ["OpenTelemetry"]

#: The instrumentation scope spans are recorded under.
TRACER_NAME = "taskwarren"
#: The exchange every task message is published to (RabbitMQ's destination name).
EXCHANGE = "taskwarren"
#: Key of the open ``process`` span in :attr:`TaskRun.state`.
_STATE = "otel.span"


def _system(app: Warren | None) -> str:
    """``messaging.system``: ``rabbitmq``, or ``taskwarren.sqlite`` / ``taskwarren.memory``
    for the embedded brokers (which have no well-known value)."""
    scheme = app.settings.scheme if app is not None else "amqp"
    return "rabbitmq" if scheme in ("amqp", "amqps") else f"taskwarren.{scheme}"


def _header_context(envelope: Envelope | None, parent: TraceParent | None = None
                    ) -> otel_context.Context | None:
    """The context of ``parent``, else of a message's valid ``tw-trace`` header, or ``None``."""
    if parent is None and envelope is not None:
        parent = parse_traceparent(envelope.headers.get(H_TRACE))
    if parent is None:
        return None
    remote = SpanContext(trace_id=int(parent.trace_id, 16), span_id=int(parent.parent_id, 16),
                         is_remote=True, trace_flags=TraceFlags(parent.flags & 0xFF))
    return trace.set_span_in_context(NonRecordingSpan(remote))


def _traceparent(span: Span) -> str | None:
    found = span.get_span_context()
    if not found.is_valid:
        return None
    return f"00-{found.trace_id:032x}-{found.span_id:016x}-{int(found.trace_flags) & 0xFF:02x}"


class OpenTelemetry(Middleware):
    """Producer and consumer spans of an app's messages, and trace context between them.

    Args:
        app: the app (its broker names ``messaging.system``); default: RabbitMQ.
        tracer_provider: default: the global one, as set by the application.
    """

    def __init__(self, app: Warren | None = None, *,
                 tracer_provider: TracerProvider | None = None) -> None:
        self._system = _system(app)
        self._rabbit = self._system == "rabbitmq"
        from taskwarren import __version__

        self._tracer = trace.get_tracer(TRACER_NAME, __version__, tracer_provider)
        self._relaying: dict[int, Span] = {}
        self._lock = threading.Lock()

    def _attributes(self, operation: str, queue: str, envelope: Envelope) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "messaging.system": self._system,
            "messaging.operation.name": operation,
            "messaging.operation.type": operation,
            "messaging.message.id": clip(envelope.message_id, MAX_ECHO_CHARS),
            "messaging.message.body.size": len(envelope.body),
        }
        if self._rabbit:
            attributes["messaging.destination.name"] = EXCHANGE
            attributes["messaging.rabbitmq.destination.routing_key"] = queue
        else:
            attributes["messaging.destination.name"] = queue
        if envelope.task:
            attributes["taskwarren.task"] = clip(envelope.task, MAX_ECHO_CHARS)
        return attributes

    @staticmethod
    def _queue(envelope: Envelope) -> str:
        return envelope.queue or (EVENTS_QUEUE if envelope.event else "")

    def before_enqueue(self, envelope: Envelope) -> None:
        """Record the message's ``create`` span; put its context in ``tw-trace``."""
        queue = self._queue(envelope)
        current = trace.get_current_span().get_span_context().is_valid
        parent = None if current else _header_context(envelope)
        span = self._tracer.start_span(f"create {queue}", context=parent, kind=SpanKind.PRODUCER,
                                       attributes=self._attributes("create", queue, envelope))
        header = _traceparent(span)
        if header is not None:
            envelope.headers[H_TRACE] = header
        span.end()

    def before_relay(self, envelope: Envelope) -> None:
        """Open the relay's ``send`` span, a child of the message's own."""
        queue = self._queue(envelope)
        span = self._tracer.start_span(f"send {queue}", context=_header_context(envelope),
                                       kind=SpanKind.PRODUCER,
                                       attributes=self._attributes("send", queue, envelope))
        header = _traceparent(span)
        if header is not None:
            envelope.headers[H_TRACE] = header
        with self._lock:
            self._relaying[id(envelope)] = span

    def after_relay(self, envelope: Envelope, error: BaseException | None) -> None:
        """End the relay's span; a failed publish is its error."""
        with self._lock:
            span = self._relaying.pop(id(envelope), None)
        if span is None:
            return
        if error is not None:
            _failed(span, error)
        span.end()

    def before_process(self, run: TaskRun) -> None:
        """Open the ``process`` span and make it current while the task runs."""
        span = self._process_span(run)
        token = otel_context.attach(trace.set_span_in_context(span))
        run.state[_STATE] = (span, token, threading.get_ident())

    def _process_span(self, run: TaskRun) -> Span:
        envelope = run.envelope if run.envelope is not None else Envelope(run.task_id, b"")
        attributes = self._attributes("process", run.queue, envelope)
        attributes["taskwarren.task"] = run.task_name  # a registered name, or "unknown"
        attributes["taskwarren.attempt"] = run.attempt
        attributes["taskwarren.redelivered"] = run.redelivered
        # A message's own trace context, never the worker's: a delivery starts anew.
        parent = _header_context(None, trace_parent(run)) or otel_context.Context()
        return self._tracer.start_span(f"process {run.queue}", context=parent,
                                       kind=SpanKind.CONSUMER, attributes=attributes)

    def after_process(self, run: TaskRun) -> None:
        """Record the outcome (and the exception of a failure); end the span.

        A run the worker settled on its own (a hard time limit, a poison message) had
        no ``before_process`` here: its span is recorded now, with the outcome.
        """
        opened = run.state.pop(_STATE, None)
        if opened is None:
            span, token, thread = self._process_span(run), None, 0
        else:
            span, token, thread = opened
        if run.task_name != UNKNOWN_TASK:
            span.set_attribute("taskwarren.task", run.task_name)
        span.set_attribute("taskwarren.outcome", run.outcome)
        if run.exception is not None:
            _failed(span, run.exception)
        elif run.outcome in ("dead_lettered", "rejected"):
            span.set_attribute("error.type", run.outcome)
            span.set_status(Status(StatusCode.ERROR, run.outcome))
        if token is not None and thread == threading.get_ident():
            otel_context.detach(token)
        span.end()


def _failed(span: Span, error: BaseException) -> None:
    name = type(error).__qualname__
    span.record_exception(error)
    span.set_attribute("error.type", name)
    span.set_status(Status(StatusCode.ERROR, clip(f"{name}: {describe(error)}", MAX_ECHO_CHARS)))

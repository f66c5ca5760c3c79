"""The message envelope: a task call as bytes and headers, and back. Nothing else.

The envelope is independent of any broker so that an outbox row can hold it too.
Bodies are JSON, always: a queue is input from the network and is never unpickled.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from taskwarren.errors import DecodeError
from taskwarren.tracing import current_traceparent

CONTENT_TYPE = "application/json"
APP_ID = "taskwarren"

H_TASK = "tw-task"
H_ATTEMPT = "tw-attempt"
H_QUEUE = "tw-queue"
H_ETA = "tw-eta"
H_TRACE = "tw-trace"
H_ERROR = "tw-error"
H_ERROR_TYPE = "tw-error-type"
H_TRACEBACK = "tw-traceback"
H_FAILED_AT = "tw-failed-at"
H_REASON = "tw-reason"
#: On an event copy: the routing key it was published with (its body is the event).
H_EVENT = "tw-event"

#: Longest task id, in UTF-8 bytes: a message id is an AMQP short string.
MAX_TASK_ID_BYTES = 255
#: Longest traceback kept in a dead letter's headers (AMQP header tables are bounded).
MAX_TRACEBACK_CHARS = 8000
#: Longest reason, error or error type we write into a header.
MAX_HEADER_CHARS = 2000
#: Longest echo of a message's own text (a task name, an event key) in errors and logs.
MAX_ECHO_CHARS = 200
#: Bytes the header table of a message we publish may take. A message's properties
#: travel in one frame, and RabbitMQ's frame limit is 128 KiB by default: past it the
#: broker closes the connection, and a dead letter that never fits comes back forever.
#: The rest of the frame is left to the other properties (and to estimates' slack).
MAX_HEADERS_BYTES = 100 * 1024
#: Longest text kept of a header that was cut to make a table fit.
CLIPPED_HEADER_CHARS = 1000
#: On a copy whose headers were cut to fit: which ones were cut or dropped.
H_CLIPPED = "tw-clipped"

#: The ``tw-*`` headers taskwarren writes; a copy cut to fit keeps only these of ``tw-*``.
_OUR_HEADERS = frozenset((H_TASK, H_ATTEMPT, H_QUEUE, H_ETA, H_TRACE, H_ERROR, H_ERROR_TYPE,
                          H_TRACEBACK, H_FAILED_AT, H_REASON, H_EVENT, H_CLIPPED))

#: Headers the broker adds when it dead-letters; a retry or replay starts clean.
_BROKER_HEADERS = ("x-death", "x-first-death-exchange", "x-first-death-queue",
                   "x-first-death-reason", "x-last-death-exchange", "x-last-death-queue",
                   "x-last-death-reason", "x-delivery-count")

HeaderValue = str | int | float | bool | None | list[Any] | dict[str, Any]


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message as the broker carries it: body bytes plus properties and headers.

    Attributes:
        message_id: the task id.
        body: the JSON body.
        headers: ``tw-*`` headers (and, on receipt, whatever the broker added).
        content_type: the body's MIME type; anything but JSON is refused by workers.
        timestamp: seconds since the epoch when it was first sent.
    """

    message_id: str
    body: bytes
    headers: dict[str, HeaderValue] = field(default_factory=dict)
    content_type: str = CONTENT_TYPE
    timestamp: int = 0

    @property
    def task(self) -> str:
        """The registered task name, or ``""`` if the header is missing."""
        value = self.headers.get(H_TASK)
        return value if isinstance(value, str) else ""

    @property
    def attempt(self) -> int:
        """Zero-based attempt number (``0`` for anything but a non-negative integer)."""
        value = self.headers.get(H_ATTEMPT, 0)
        # A negative count from a producer would buy an unlimited retry budget.
        return max(value, 0) if isinstance(value, int) and not isinstance(value, bool) else 0

    @property
    def queue(self) -> str:
        """The queue this message was sent to."""
        value = self.headers.get(H_QUEUE)
        return value if isinstance(value, str) else ""

    @property
    def event(self) -> str:
        """The event routing key of an event copy, or ``""`` for a plain task call."""
        value = self.headers.get(H_EVENT)
        return value if isinstance(value, str) else ""

    def clean(self) -> Envelope:
        """A copy without the headers the broker adds on dead-lettering.

        RabbitMQ drops a message that comes back to a queue carrying only "expired"
        deaths in its ``x-death`` history (dead-letter cycle detection), so every
        retry and replay publishes a clean copy.
        """
        headers = {k: v for k, v in self.headers.items() if k not in _BROKER_HEADERS}
        return replace(self, headers=headers)

    def with_headers(self, updates: Mapping[str, HeaderValue]) -> Envelope:
        """A clean copy with ``updates`` applied (a value of ``None`` removes the header).

        The copy's headers always fit :data:`MAX_HEADERS_BYTES`: if the message came
        with headers so large that they would not, the largest of them are cut.
        """
        headers = dict(self.clean().headers)
        for name, value in updates.items():
            if value is None:
                headers.pop(name, None)
            else:
                headers[name] = value
        return replace(self, headers=fit_headers(headers))


def clip(text: str, limit: int = MAX_HEADER_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters]"


def clip_start(text: str, limit: int) -> str:
    """The last ``limit`` characters of ``text``, saying how much was cut (tracebacks)."""
    if len(text) <= limit:
        return text
    return f"[{len(text) - limit} characters cut]...{text[-limit:]}"


def header_bytes(value: object) -> int:
    """A generous estimate of the bytes ``value`` takes in an AMQP header table."""
    if isinstance(value, str):
        return 5 + len(value.encode("utf-8", "replace"))
    if isinstance(value, bytes | bytearray):
        return 5 + len(value)
    if isinstance(value, Mapping):
        return 5 + sum(2 + len(str(k).encode("utf-8", "replace")) + header_bytes(v)
                       for k, v in value.items())
    if isinstance(value, list | tuple):
        return 5 + sum(header_bytes(v) for v in value)
    if value is None or isinstance(value, bool | int | float | datetime):
        return 9
    return 5 + len(str(value))


def fit_headers(headers: dict[str, HeaderValue]) -> dict[str, HeaderValue]:
    """``headers`` cut to fit :data:`MAX_HEADERS_BYTES`, largest first.

    A long text header is cut to :data:`CLIPPED_HEADER_CHARS`; any other header that
    is not one of ours, or is ours but neither text nor a number, is dropped. What is
    left then always fits: a dozen headers of at most that many characters.
    :data:`H_CLIPPED` names what was cut, so a reader knows the copy is not the original.
    """
    sizes = {name: 2 + len(name.encode("utf-8", "replace")) + header_bytes(value)
             for name, value in headers.items()}
    total = sum(sizes.values())
    if total <= MAX_HEADERS_BYTES:
        return headers
    out = dict(headers)
    cut: list[str] = []
    for name in sorted(sizes, key=sizes.__getitem__, reverse=True):
        if total <= MAX_HEADERS_BYTES - 2 * CLIPPED_HEADER_CHARS:  # room for H_CLIPPED
            break
        value = out[name]
        if isinstance(value, str) and len(value) > CLIPPED_HEADER_CHARS:
            out[name] = clip(value, CLIPPED_HEADER_CHARS)
            total += header_bytes(out[name]) - header_bytes(value)
        elif name not in _OUR_HEADERS or not isinstance(value, str | int | float):
            # A producer may set any number of ``tw-*`` names, and values of any type.
            del out[name]
            total -= sizes[name]
        else:
            continue
        cut.append(clip(name, 64))
    out[H_CLIPPED] = clip(", ".join(cut), CLIPPED_HEADER_CHARS)
    return out


def revived(envelope: Envelope) -> Envelope:
    """A clean copy of a dead letter for replay: same task id, attempt reset, no error."""
    updates: dict[str, HeaderValue] = dict.fromkeys(
        (H_ERROR, H_ERROR_TYPE, H_TRACEBACK, H_FAILED_AT, H_REASON))
    updates[H_ATTEMPT] = 0
    return envelope.with_headers(updates)


def new_task_id() -> str:
    """A new random task id (UUID4, as text).

    Formatted here: ``str(uuid.uuid4())`` costs four times as much (a ``UUID`` object
    built and formatted), on every send.
    """
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def encode(
    task: str,
    queue: str,
    body: bytes,
    *,
    task_id: str | None = None,
    attempt: int = 0,
    eta: datetime | None = None,
    trace: str | None = None,
) -> Envelope:
    """Build the envelope of a task call whose JSON body is already serialised.

    ``trace`` defaults to the current trace context (:mod:`taskwarren.tracing`).
    """
    headers: dict[str, HeaderValue] = {H_TASK: task, H_ATTEMPT: attempt, H_QUEUE: queue}
    if eta is not None:
        headers[H_ETA] = eta.astimezone(UTC).isoformat()
    if trace is None:
        trace = current_traceparent()
    if trace:
        headers[H_TRACE] = trace
    return Envelope(
        message_id=task_id or new_task_id(),
        body=body,
        headers=headers,
        timestamp=int(time.time()),
    )


def encode_event(routing_key: str, body: bytes) -> Envelope:
    """Build the envelope of an event whose JSON body is already serialised.

    It names no task: the consumer of each subscriber queue picks the task whose
    subscription matches ``routing_key`` and records it on retries and dead letters.
    It carries the current trace context, as a task call does.
    """
    headers: dict[str, HeaderValue] = {H_EVENT: routing_key, H_ATTEMPT: 0}
    trace = current_traceparent()
    if trace:
        headers[H_TRACE] = trace
    return Envelope(
        message_id=new_task_id(),
        body=body,
        headers=headers,
        timestamp=int(time.time()),
    )


def check_envelope(envelope: Envelope, max_bytes: int) -> None:
    """Refuse an envelope a worker must not try to run.

    Raises:
        DecodeError: wrong content type, oversized body, or neither a task name nor an
            event key.
    """
    if envelope.content_type != CONTENT_TYPE:
        raise DecodeError(f"content type {envelope.content_type!r} is not {CONTENT_TYPE}")
    if len(envelope.body) > max_bytes:
        raise DecodeError(f"body of {len(envelope.body)} bytes exceeds the limit of {max_bytes}")
    if not envelope.task and not envelope.event:
        raise DecodeError(f"missing or invalid {H_TASK} header")


def decode_kwargs(envelope: Envelope, max_bytes: int) -> dict[str, Any]:
    """Check an envelope and parse its body into keyword arguments (for display).

    Raises:
        DecodeError: as :func:`check_envelope`, or a body that is not a JSON object.
    """
    check_envelope(envelope, max_bytes)
    try:
        kwargs = json.loads(envelope.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"body is not valid JSON: {exc}") from None
    if not isinstance(kwargs, dict):
        raise DecodeError(f"body is a JSON {type(kwargs).__name__}, not an object")
    return kwargs


def failure_headers(
    error_type: str, error: str, traceback_text: str = "", reason: str = ""
) -> dict[str, HeaderValue]:
    """Headers recorded on a dead letter."""
    headers: dict[str, HeaderValue] = {
        H_ERROR_TYPE: clip(error_type, MAX_ECHO_CHARS),
        H_ERROR: clip(error),
        H_FAILED_AT: datetime.now(UTC).isoformat(),
        H_REASON: clip(reason or error_type),
    }
    if traceback_text:
        headers[H_TRACEBACK] = clip_start(traceback_text, MAX_TRACEBACK_CHARS)
    return headers


def failure_summary(envelope: Envelope) -> tuple[str, str, str]:
    """(error type, error, failed at) of a dead letter, ours or the broker's.

    A message the broker dead-lettered itself (a quorum queue's delivery limit, a
    rejected message) carries no ``tw-error`` headers, only RabbitMQ's death record.
    """
    headers = envelope.headers
    if H_ERROR_TYPE in headers:
        return (str(headers[H_ERROR_TYPE]), str(headers.get(H_ERROR, "")),
                str(headers.get(H_FAILED_AT, "")))
    reason = str(headers.get("x-first-death-reason", ""))
    deaths = headers.get("x-death")
    when = ""
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        reason = reason or str(deaths[0].get("reason", ""))
        when = str(deaths[0].get("time", ""))
    if reason == "delivery_limit":
        return ("DeliveryLimitExceeded",
                "redelivered past the queue's x-delivery-limit (did it kill its worker?)", when)
    if reason:
        return (f"broker:{reason}", f"dead-lettered by the broker ({reason})", when)
    return ("", "", "")

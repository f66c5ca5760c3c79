"""W3C trace context on messages: the ``traceparent`` a send carries in ``tw-trace``.

A send puts the current trace context in the message's ``tw-trace`` header; a worker
continues it while the task runs, so a task sent from inside a task stays in its trace
(with no tracing library at all: the header is then passed on unchanged). The
OpenTelemetry middleware (:mod:`taskwarren.otel`) replaces the header with its
producer span's context and starts the consumer span from it.

A header comes from the network and is hostile: :func:`parse_traceparent` takes only
what the W3C Trace Context recommendation allows and returns ``None`` for anything
else, which is then ignored (never an error, never echoed).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import NamedTuple

__all__ = ["TraceParent", "current_traceparent", "parse_traceparent", "traceparent_scope"]

#: Longest header value looked at: a later version may append fields, not pages.
MAX_TRACEPARENT_CHARS = 256

# version-trace_id-parent_id-flags, lowercase hex only (the recommendation forbids upper).
_FIELDS = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = "0" * 32
_ZERO_PARENT = "0" * 16


class TraceParent(NamedTuple):
    """A valid W3C ``traceparent`` (a named tuple: made per delivery, it must be cheap).

    Attributes:
        trace_id: 32 lowercase hex digits, not all zero.
        parent_id: 16 lowercase hex digits (the sender's span), not all zero.
        flags: the trace flags (bit 0: sampled).
    """

    trace_id: str
    parent_id: str
    flags: int

    @property
    def sampled(self) -> bool:
        """Whether the sender recorded its span (the ``sampled`` flag)."""
        return bool(self.flags & 1)

    def __str__(self) -> str:
        return f"00-{self.trace_id}-{self.parent_id}-{self.flags:02x}"


def parse_traceparent(value: object) -> TraceParent | None:
    """``value`` as a :class:`TraceParent`, or ``None`` if it is not a valid one.

    Version ``00`` must be exactly 55 characters. A later version (not ``ff``) may be
    longer, its first four fields then followed by ``-``; it is read as version ``00``,
    as the recommendation asks.
    """
    if not isinstance(value, str) or not 55 <= len(value) <= MAX_TRACEPARENT_CHARS:
        return None
    match = _FIELDS.match(value)
    if match is None:
        return None
    version, trace_id, parent_id, flags = match.groups()
    if version == "ff" or (version == "00" and len(value) != 55):
        return None
    if len(value) > 55 and value[55] != "-":
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_PARENT:
        return None
    return TraceParent(trace_id, parent_id, int(flags, 16))


_current: ContextVar[TraceParent | None] = ContextVar("taskwarren_traceparent", default=None)


def current_traceparent() -> str | None:
    """The ``traceparent`` a message sent now carries, or ``None`` outside any trace."""
    found = _current.get()
    return str(found) if found is not None else None


def enter(value: object) -> Token[TraceParent | None]:
    """Make ``value`` (if a valid traceparent; else no trace) the current context.

    Returns:
        The token :func:`leave` takes to restore the context before.
    """
    parent = value if isinstance(value, TraceParent) else parse_traceparent(value)
    return _current.set(parent)


def leave(token: Token[TraceParent | None]) -> None:
    """Restore the context from before :func:`enter`."""
    _current.reset(token)


@contextmanager
def traceparent_scope(value: str | TraceParent | None) -> Iterator[TraceParent | None]:
    """Send within the trace ``value`` (e.g. an incoming HTTP request's ``traceparent``
    header) without a tracing library; an invalid value means no trace.

    Yields:
        The valid traceparent, or ``None``.
    """
    token = enter(value)
    try:
        yield _current.get()
    finally:
        leave(token)

"""What is known of a job: its states, their order, and the lifecycle events that carry them.

A job's life is told by events (``queued`` or ``scheduled`` when sent, ``running`` when
a worker starts it, ``retrying``, ``succeeded``, ``dead``), and by two user actions
(``cancelled``, and a retry that runs a finished job again). Events are at-least-once
and may arrive out of order, so each carries a :func:`version`: the job's run epoch (a
user's retry starts a new one), its attempt, and the rank of its state within that
attempt. What the table holds for a job is what its highest version said; applying the
same events in any order, any number of times, gives the same row.

Events travel through the broker as :data:`EVENTS_TASK` messages on the store's own
events queue (:func:`taskwarren.urls.events_queue`: apps that share a broker but not a store never
apply each other's events), a JSON list of objects; everything in one comes from a
message and is treated as hostile (bounded, type-checked) when read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any, NamedTuple

from taskwarren.message import MAX_TASK_ID_BYTES, Envelope, clip, encode
from taskwarren.urls import EVENTS_QUEUE_PREFIX

#: The events queue's name prefix (see :func:`taskwarren.urls.events_queue`).
JOB_EVENTS_QUEUE = EVENTS_QUEUE_PREFIX
#: The task name event messages carry (no task of that name runs anywhere).
EVENTS_TASK = "taskwarren.job-events"
#: The envelope header holding a job's run epoch (absent: 0).
H_EPOCH = "tw-epoch"

#: Every state, in the order a job moves through them.
STATES = ("queued", "scheduled", "running", "retrying", "succeeded", "dead", "cancelled")
#: States a job is finished in (pruned after the retention).
TERMINAL_STATES = ("succeeded", "dead", "cancelled")
#: States in which a cancel still keeps a job from running.
CANCELLABLE_STATES = ("queued", "scheduled", "retrying")

#: Rank of a state within one attempt: a later event of the same attempt ranks higher.
RANKS = {"queued": 0, "scheduled": 0, "running": 1, "retrying": 2, "succeeded": 3, "dead": 3}
#: The rank a user's cancel writes: above every event of the run it cancels.
_CANCEL_SLOT = (1 << 32) - 1
_MAX_ATTEMPT = (1 << 27) - 1

#: Longest error text and traceback kept in a row (characters).
MAX_ERROR_CHARS = 2_000
MAX_TRACEBACK_CHARS = 8_000
#: Longest task, queue and worker names kept (characters; the columns hold 255).
MAX_NAME_CHARS = 255


def version(epoch: int, attempt: int, state: str) -> int:
    """The order of what an event says: later epoch, then attempt, then rank of state."""
    attempt = min(max(attempt, 0), _MAX_ATTEMPT)
    return (max(epoch, 0) << 32) | (attempt << 4) | RANKS[state]


def cancel_version(epoch: int) -> int:
    """The version a cancel writes: higher than anything the run of ``epoch`` reports."""
    return (max(epoch, 0) << 32) | _CANCEL_SLOT


def epoch_of(version_: int) -> int:
    """The run epoch a version belongs to."""
    return version_ >> 32


def envelope_epoch(envelope: Envelope) -> int:
    """The run epoch of a task message (``tw-epoch``; absent or malformed: 0)."""
    value = envelope.headers.get(H_EPOCH, 0)
    return value if isinstance(value, int) and 0 <= value < (1 << 30) else 0


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One thing that happened to a job, as the projector applies it.

    Attributes:
        task_id: the job.
        state: the state it reached (one of :data:`RANKS`).
        at: when (seconds since the epoch).
        task: the task's name.
        queue: the queue it was sent to.
        epoch: the run epoch (0 until a user retries a finished job).
        attempt: 0 for the first attempt.
        created_at: when it was first sent.
        scheduled_at: when it may run (a delayed send or a retry's delay), if later.
        started_at: when the attempt started running.
        worker: the worker process (``host:pid``).
        duration_s: seconds the attempt ran.
        error: the error, for ``retrying`` and ``dead``.
        traceback: its traceback.
        args: the call's JSON arguments (``queued``/``scheduled`` only).
    """

    task_id: str
    state: str
    at: float
    task: str = ""
    queue: str = ""
    epoch: int = 0
    attempt: int = 0
    created_at: float | None = None
    scheduled_at: float | None = None
    started_at: float | None = None
    worker: str | None = None
    duration_s: float | None = None
    error: str | None = None
    traceback: str | None = None
    args: str | None = None

    @property
    def version(self) -> int:
        """Where this event stands among the job's others."""
        return version(self.epoch, self.attempt, self.state)


_FLOATS = ("at", "created_at", "scheduled_at", "started_at", "duration_s")
_NAME_FIELDS = ("task", "queue", "worker")
_CLIPPED = {"error": MAX_ERROR_CHARS, "traceback": MAX_TRACEBACK_CHARS}
#: An event's fields in their order (what :func:`encode_events` writes).
_FIELDS = tuple(f.name for f in fields(JobEvent))
_NAMES = frozenset(_FIELDS)


def encode_events(events: list[JobEvent], queue: str = JOB_EVENTS_QUEUE) -> Envelope:
    """One event message holding ``events``, for the events ``queue``."""
    # Plain getattr, not dataclasses.asdict: asdict deep-copies every value and took
    # most of a 1,000-call send_many's time for its queued events.
    body = json.dumps([{k: v for k in _FIELDS if (v := getattr(e, k)) is not None and v != ""}
                       for e in events], separators=(",", ":"), ensure_ascii=False)
    return encode(EVENTS_TASK, queue, body.encode("utf-8", "surrogatepass"))


def decode_events(body: bytes) -> list[JobEvent]:
    """The events in an event message's body.

    Raises:
        ValueError: the body is not a list of well-formed events (the reason is bounded).
    """
    try:
        items = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"job events: not JSON ({type(exc).__name__})") from None
    if not isinstance(items, list):
        raise ValueError("job events: not a list")
    return [_event(item) for item in items]


def storable(text: str) -> str:
    """``text`` as every database stores it: valid UTF-8 (no lone surrogates), no NUL."""
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


def _event(item: object) -> JobEvent:
    if not isinstance(item, dict) or not set(item) <= _NAMES:
        raise ValueError("job events: an event is not an object of known fields")
    values: dict[str, Any] = {}
    for name, value in item.items():
        if name in _FLOATS:
            if not isinstance(value, (int, float)) or isinstance(value, bool) \
                    or not math.isfinite(value):
                raise ValueError(f"job events: {name} is not a number")
            values[name] = float(value)
        elif name in ("epoch", "attempt"):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 30:
                raise ValueError(f"job events: {name} is not a small whole number")
            values[name] = value
        elif not isinstance(value, str):
            raise ValueError(f"job events: {name} is not text")
        elif name == "task_id" and len(value.encode("utf-8", "replace")) > MAX_TASK_ID_BYTES:
            raise ValueError(f"job events: task_id is over {MAX_TASK_ID_BYTES} bytes")
        else:
            text = storable(value)
            if name in _NAME_FIELDS:
                text = text[:MAX_NAME_CHARS]
            values[name] = clip(text, _CLIPPED[name]) if name in _CLIPPED else text
    if values.get("state") not in RANKS or not values.get("task_id") or "at" not in values:
        raise ValueError("job events: an event lacks task_id, a known state or at")
    return JobEvent(**values)


@dataclass(frozen=True, slots=True)
class Job:
    """A row of ``taskwarren_jobs``: what the store knows of one job.

    Attributes:
        id: the task id.
        task: the task's name.
        queue: the queue it was sent to.
        state: one of :data:`STATES`.
        attempt: 0 for the first attempt.
        created_at: when it was sent (seconds since the epoch, UTC).
        scheduled_at: when it may run, if it was held back.
        started_at: when its last attempt started.
        finished_at: when it reached its final state.
        duration_s: seconds its last attempt ran.
        worker: the worker process that last ran it (``host:pid``).
        error: its last error.
        traceback: that error's traceback.
        args: its JSON arguments.
        unique_key: the key it holds while live, if it was sent with one.
        updated_at: when the row last changed.
    """

    id: str
    task: str
    queue: str
    state: str
    attempt: int
    created_at: float
    scheduled_at: float | None
    started_at: float | None
    finished_at: float | None
    duration_s: float | None
    worker: str | None
    error: str | None
    traceback: str | None
    args: str | None
    unique_key: str | None
    updated_at: float

    def as_dict(self) -> dict[str, Any]:
        """The row as plain JSON-ready values."""
        return asdict(self)

    def as_json(self) -> dict[str, Any]:
        """The row as ``taskwarren jobs show --json`` and the dashboard's API give it: times
        as ISO-8601 strings in UTC, or ``None``."""
        values = self.as_dict()
        for name in _TIMES:
            values[name] = utc(values[name])
        return values


#: The time columns of a :class:`Job`.
_TIMES = ("created_at", "scheduled_at", "started_at", "finished_at", "updated_at")


def utc(at: float | None) -> str | None:
    """``at`` (seconds since the epoch) as an ISO-8601 UTC string, or ``None``."""
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat()


class Start(NamedTuple):
    """A job a worker is about to run (see :meth:`JobTable.start_many`)."""

    task_id: str
    task: str
    queue: str
    epoch: int
    attempt: int
    created_at: float


@dataclass(frozen=True, slots=True)
class Cancelled:
    """What a cancel came to.

    Attributes:
        done: the job will not run (it was removed from the outbox or marked cancelled).
        state: the job's state now (``""`` for an unknown id).
        how: a sentence saying what happened, for a person.
        epoch: the run epoch it concerns (a user's retry starts a new one).
    """

    done: bool
    state: str
    how: str
    epoch: int = 0


def merge(events: Sequence[JobEvent]) -> list[tuple[Any, ...]]:
    """One row image per job (in task-id order) from ``events`` of any order.

    The state columns come from the highest version, the latest event among equals (a
    redelivered job runs its attempt again); the arguments and the time it was sent from
    the event that carries them (the one its sender wrote). :meth:`JobTable.upsert_sql`
    orders rows the same way, so batches in any order end the same.
    """
    by_id: dict[str, list[JobEvent]] = {}
    for event in events:
        by_id.setdefault(event.task_id, []).append(event)
    rows = []
    for task_id in sorted(by_id):
        group = by_id[task_id]
        top = max(group, key=lambda e: (e.version, e.at))
        sent = next((e for e in group if e.args is not None), None)
        created = sent.created_at if sent is not None and sent.created_at is not None else \
            min((e.created_at or e.at) for e in group)
        finished = top.at if top.state in TERMINAL_STATES else None
        # An event that does not know when its attempt started (a worker's hard time
        # limit) keeps what an earlier one of its run said, as the upsert does.
        started = top.started_at if top.started_at is not None else max(
            (e.started_at for e in group
             if e.started_at is not None and e.epoch == top.epoch), default=None)
        rows.append((task_id, top.task or (sent.task if sent else ""),
                     top.queue or (sent.queue if sent else ""), top.state, top.attempt,
                     top.version, sent.args if sent is not None else None, top.error,
                     top.traceback, top.worker, created, top.scheduled_at, started,
                     finished, top.duration_s, top.at))
    return rows

"""The jobs page's filters and its keyset cursor (``created_at`` and task id, newest first)."""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime

from taskwarren.jobs import since_seconds
from taskwarren.store.jobs import STATES, Job

__all__ = [
    "MAX_PAGE_SIZE",
    "PAGE_SIZE",
    "Filters",
    "JobsPage",
    "decode_cursor",
    "encode_cursor",
    "jobs_query",
]

#: Jobs per page of ``/jobs`` unless asked otherwise, and the most a page may hold.
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


@dataclass(frozen=True, slots=True)
class Filters:
    """The filters of the jobs page, checked.

    Attributes:
        state: one of the states, or ``None``.
        task: a task name, or ``None``.
        queue: a queue name, or ``None``.
        since: the text given (``1h`` or an ISO-8601 time), or ``None``.
        since_at: what it means, in seconds since the epoch.
        limit: jobs per page.
    """

    state: str | None = None
    task: str | None = None
    queue: str | None = None
    since: str | None = None
    since_at: float | None = None
    limit: int = PAGE_SIZE

    @classmethod
    def parse(cls, params: dict[str, str], now: float) -> Filters:
        """The filters in a query string.

        Raises:
            ValueError: an unknown state, a bad ``since`` or ``limit`` (the message says
                which; it quotes no input but the state names).
        """
        def given(name: str) -> str | None:
            value = params.get(name, "").strip()
            return value or None

        for name in ("state", "task", "queue", "since", "limit"):
            if "\x00" in params.get(name, ""):
                raise ValueError(f"{name}: a NUL character is not allowed")
        state = given("state")
        if state is not None and state not in STATES:
            raise ValueError(f"unknown state; the states are {', '.join(STATES)}")
        since = given("since")
        since_at = None if since is None else _since(since, now)
        limit_text = given("limit")
        try:
            limit = PAGE_SIZE if limit_text is None else int(limit_text)
        except ValueError:
            raise ValueError("limit: give a whole number") from None
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValueError(f"limit must be 1 to {MAX_PAGE_SIZE}")
        return cls(state, given("task"), given("queue"), since, since_at, limit)

    def query(self) -> dict[str, str]:
        """The filters as query parameters (only those given)."""
        values = {"state": self.state, "task": self.task, "queue": self.queue,
                  "since": self.since,
                  "limit": None if self.limit == PAGE_SIZE else str(self.limit)}
        return {k: v for k, v in values.items() if v is not None}


def _since(text: str, now: float) -> float:
    try:
        return now - since_seconds(text)
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("since: give a duration (90s, 30m, 1h, 2d) or an ISO-8601 time "
                         "(2026-12-07T10:00, read as UTC without an offset)") from None
    return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).timestamp()


def encode_cursor(job: Job) -> str:
    """The keyset cursor after ``job``: its ``created_at`` and id, opaque in a URL."""
    raw = json.dumps([job.created_at, job.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(text: str) -> tuple[float, str]:
    """The ``(created_at, id)`` in a cursor made by :func:`encode_cursor`.

    Raises:
        ValueError: not such a cursor.
    """
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        created_at, task_id = json.loads(raw)
    except (ValueError, TypeError, RecursionError, binascii.Error):
        raise ValueError("malformed page cursor") from None
    if isinstance(created_at, bool) or not isinstance(created_at, (int, float)) \
            or not isinstance(task_id, str) or "\x00" in task_id:
        raise ValueError("malformed page cursor")
    try:
        at = float(created_at)
    except OverflowError:  # an integer of hundreds of digits
        raise ValueError("malformed page cursor") from None
    if not math.isfinite(at):  # NaN and Infinity: JSON as Python reads it
        raise ValueError("malformed page cursor")
    return at, task_id


def jobs_query(params: dict[str, str], now: float) -> tuple[Filters, tuple[float, str] | None]:
    """The filters and the cursor (``before``) of a ``/jobs`` or ``/api/jobs`` request.

    Raises:
        ValueError: a malformed filter or cursor (the message says which).
    """
    before = params.get("before") or None
    return Filters.parse(params, now), decode_cursor(before) if before else None


@dataclass(frozen=True, slots=True)
class JobsPage:
    """One page of jobs, newest first.

    Attributes:
        jobs: the jobs on it.
        next_cursor: the cursor of the next (older) page, ``None`` on the last one.
        problem: why there are none to show (no store, a failing one), if so.
    """

    jobs: list[Job]
    next_cursor: str | None
    problem: str | None = None

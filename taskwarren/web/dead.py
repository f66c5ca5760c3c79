"""Dead letters as the dashboard shows them: the first few of a queue, read at most every
few seconds, each text cut short, a message that does not decode shown from its body.

On RabbitMQ, reading dead letters takes them (unacked, on a channel of its own) and
gives them back, as ``taskwarren dlq list`` does: each read counts a delivery of every
message read. So a view reads at most :data:`MAX_SHOWN_DEAD`, and a queue's are read at
most once per ``ttl_s``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from taskwarren.brokers.capabilities import Admin
from taskwarren.errors import TaskwarrenError
from taskwarren.message import Envelope, decode_kwargs, failure_summary

__all__ = ["MAX_SHOWN_DEAD", "MAX_TEXT_CHARS", "DeadLetter", "DeadLetterReader", "DeadLetters",
           "cut"]

#: How much of a body that does not decode is shown.
RAW_BODY_BYTES = 4096
#: The longest text of a dead letter (its arguments, its error...), and of a job's long
#: texts in a list of jobs, that pages and the API give (longer ends ``...``).
MAX_TEXT_CHARS = 4096
#: The most dead letters a queue's page (and ``/api/queues/<name>``) shows.
MAX_SHOWN_DEAD = 100
#: The most queues whose dead letters are kept for reuse.
MAX_CACHED_QUEUES = 256


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead letter as the queue page lists it (every text from the message)."""

    id: str
    task: str
    attempt: int
    error_type: str
    error: str
    failed_at: str
    reason: str | None
    arguments: str

    @classmethod
    def of(cls, envelope: Envelope, max_bytes: int) -> DeadLetter:
        """The dead letter ``envelope``: its arguments as JSON, or as the raw text of its
        body (cut short) when that cannot be decoded, however it fails (a body nested
        too deep raises ``RecursionError``)."""
        error_type, error, failed_at = failure_summary(envelope)
        try:
            arguments = json.dumps(decode_kwargs(envelope, max_bytes), ensure_ascii=False,
                                   default=str)
        except Exception:  # anything a hostile body makes the decoder raise
            arguments = _raw_body(envelope)
        reason = envelope.headers.get("tw-reason")
        return cls(cut(envelope.message_id), cut(envelope.task), envelope.attempt,
                   cut(error_type), cut(error), cut(failed_at),
                   None if reason is None else cut(str(reason)), cut(arguments))

    @classmethod
    def raw(cls, envelope: Envelope) -> DeadLetter:
        """``envelope`` shown from its id and raw body only (its headers did not read)."""
        return cls(cut(str(envelope.message_id)), "", 0, "", "", "", None,
                   cut(_raw_body(envelope)))

    def as_json(self) -> dict[str, Any]:
        """The dead letter as the JSON API gives it."""
        return asdict(self)


def cut(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """``text`` if at most ``limit`` characters long, else its start ending ``...``."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class DeadLetters:
    """The dead letters of a queue that a page shows.

    Attributes:
        letters: the first :data:`MAX_SHOWN_DEAD` of them.
        total: how many there are (``None``: unknown).
        problem: why none could be read, if so.
    """

    letters: list[DeadLetter]
    total: int | None
    problem: str | None = None


def _raw_body(envelope: Envelope) -> str:
    """The start of ``envelope``'s body as text (undecodable bytes replaced)."""
    return cut(envelope.body[:RAW_BODY_BYTES + 1].decode("utf-8", "replace"), RAW_BODY_BYTES)


class DeadLetterReader:
    """Reads the first :data:`MAX_SHOWN_DEAD` dead letters of a queue, at most once per
    ``ttl_s`` (a read that failed is not kept).

    Args:
        admin: the broker to read from (called for each read).
        max_message_bytes: the largest body decoded.
        ttl_s: how long a queue's dead letters are shown again without reading them.
        describe: one line for the page about a read that failed.
    """

    def __init__(self, admin: Callable[[], Admin], max_message_bytes: int, ttl_s: float,
                 describe: Callable[[BaseException], str]) -> None:
        self._admin = admin
        self._max_bytes = max_message_bytes
        self.ttl_s = ttl_s
        self._describe = describe
        # One read at a time (the broker's reader serializes them anyway): a second view
        # of the same queue then waits for the first and is served what it read.
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, DeadLetters]] = {}

    def read(self, name: str) -> DeadLetters:
        """The first dead letters of queue ``name`` and how many there are, or why not."""
        with self._lock:
            known = self._cache.get(name)
            if known is not None and time.monotonic() - known[0] < self.ttl_s:
                return known[1]
            found = self._read(name)
            if found.problem is None and self.ttl_s > 0:
                if len(self._cache) >= MAX_CACHED_QUEUES:
                    del self._cache[min(self._cache, key=lambda q: self._cache[q][0])]
                self._cache[name] = (time.monotonic(), found)
            return found

    def forget(self, name: str) -> None:
        """Read queue ``name``'s dead letters afresh next time (they were acted on)."""
        with self._lock:
            self._cache.pop(name, None)

    def _read(self, name: str) -> DeadLetters:
        try:
            admin = self._admin()
            found = admin.dead_letters(name, MAX_SHOWN_DEAD)
            # All of them were read, unless there may be more: then ask how many.
            total = len(found) if len(found) < MAX_SHOWN_DEAD else max(
                admin.stats(name).dead, len(found))
        except TaskwarrenError as exc:
            return DeadLetters([], None, self._describe(exc))
        letters = []
        for envelope in found[:MAX_SHOWN_DEAD]:
            try:
                letters.append(DeadLetter.of(envelope, self._max_bytes))
            except Exception:  # one poison message never fails the list
                letters.append(DeadLetter.raw(envelope))
        return DeadLetters(letters, total)

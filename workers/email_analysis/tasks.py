"""The taskwarren tasks of the email pipeline.

Two queues, so storage problems never hold up analysis and vice versa:

``email.ingest``
    :func:`ingest` reads one message file, analyses it and sends the result
    on. A file that cannot be read raises :class:`UnreadableMessageError`,
    which is never retried: the message goes to ``email.ingest.dead`` with
    the reason. Bad MIME is not an error: it is analysed and marked broken.
``email.store``
    :func:`store_result` upserts the result by Message-ID, so running it twice
    for the same message (at-least-once delivery) leaves one row; a message the
    ingress accepted is stored once, never over another message that reused its
    Message-ID (:meth:`.store.ResultStore.upsert_once`).
``email.flagged``
    A message scoring :data:`FLAG_SCORE` or more is also published as the event
    ``email.flagged`` (a :class:`FlaggedEmail`); :func:`record_flagged` subscribes
    to it and records it. Other teams subscribe their own tasks, on their own
    queues, without touching this module; each gets its own copy.

Run a pool with ``taskwarren worker workers.email_analysis.tasks -c 2``;
``TASKWARREN_URL`` picks the broker, ``EMAIL_ANALYSIS_DB`` the results store and
``EMAIL_ANALYSIS_MAILDIR`` the directory ingest may read message files from.
"""

# No ``from __future__ import annotations`` here: taskwarren builds each task's
# argument model from ``inspect.signature``, which would then see the string
# "Analysis" instead of the class.
import json
import os
from functools import lru_cache

import structlog
from pydantic import BaseModel

from taskwarren import Warren, task
from taskwarren.message import clip

from . import store
from .analysis import Analysis, AnalysisConfig, analyse
from .files import UnreadableMessageError, maildir_root, read_message_file

__all__ = [
    "FLAGGED_EVENT",
    "FLAGGED_QUEUE",
    "FLAG_SCORE",
    "INGEST_QUEUE",
    "STORE_QUEUE",
    "FlaggedEmail",
    "UnreadableMessageError",
    "ingest",
    "record_flagged",
    "store_result",
]

INGEST_QUEUE = "email.ingest"
STORE_QUEUE = "email.store"
#: Routing key of the event published for a message that scores high.
FLAGGED_EVENT = "email.flagged"
#: Queue of :func:`record_flagged`, the pipeline's own subscriber.
FLAGGED_QUEUE = "email.flagged"
#: Score from which a message is flagged.
FLAG_SCORE = 70

log = structlog.get_logger("email_analysis")


class FlaggedEmail(BaseModel):
    """The ``email.flagged`` event: a message that scored :data:`FLAG_SCORE` or more."""

    message_id: str
    score: int
    reasons: list[str]
    sender_domain: str | None = None
    subject: str | None = None


@lru_cache(maxsize=1)
def _config() -> AnalysisConfig:
    return AnalysisConfig.from_env()


@task(queue=STORE_QUEUE, retries=5, time_limit=30)
def store_result(analysis: Analysis, message_key: str | None = None) -> None:
    """Upsert one analysis into the results store, keyed by its Message-ID.

    With ``message_key`` (a message the ingress accepted), only the first analysis of
    that message is stored: a redelivered one finds it done (see
    :meth:`.store.ResultStore.upsert_once`).
    """
    if message_key is None:
        store.upsert(analysis)
    elif not store.upsert_once(analysis, message_key):
        log.info("email.already_stored", message_key=clip(message_key, 64))


@task(
    queue=INGEST_QUEUE,
    retries=3,
    time_limit=60,
    dont_retry=(UnreadableMessageError,),
)
def ingest(path: str, message_id: str, message_key: str | None = None) -> None:
    """Read, parse, extract and score the message at ``path``; queue the result for storage.

    ``message_key`` comes with a message the ingress accepted (:mod:`.intake`); it goes
    with the result, so the result is stored once however often either task runs.

    Only files below ``EMAIL_ANALYSIS_MAILDIR`` are read (symlinks and ``..`` resolved
    first): a task message is no licence to read whatever the worker can read.

    Raises:
        UnreadableMessageError: missing, unreadable or oversized file, a path outside
            the maildir, or no maildir configured (dead-lettered at once, with the reason).
    """
    root = maildir_root()
    if root is None:
        raise UnreadableMessageError(
            path, "EMAIL_ANALYSIS_MAILDIR is not set: ingest reads only below it")
    if message_key is not None and not os.path.lexists(path):
        results = store.default_store()
        if results.analysed(message_key):  # done before, its file pruned since (a replay)
            log.info("email.already_analysed", message_key=clip(message_key, 64))
            return
        # The ingress may have pointed its record at a new copy of a lost file.
        path = results.recorded_path(message_key) or path
    raw = read_message_file(path, root=root)
    result = analyse(raw, message_id, config=_config())
    store_result.send(analysis=result, message_key=message_key)
    if result.score >= FLAG_SCORE:
        _publish_flagged(result)


def _publish_flagged(result: Analysis) -> None:
    event = FlaggedEmail(message_id=result.message_id, score=result.score,
                         reasons=result.reasons, sender_domain=result.sender_domain,
                         subject=result.subject)
    # Through the app this module's tasks send with (tests swap store_result).
    app = store_result.app
    assert isinstance(app, Warren)  # an app, which publishes events, not a bare sender
    app.publish_event(FLAGGED_EVENT, event)


@task(queue=FLAGGED_QUEUE, subscribe=[FLAGGED_EVENT], retries=5, time_limit=30)
def record_flagged(event: FlaggedEmail) -> None:
    """Record a flagged message: a structured log line, and a JSON line appended to
    ``EMAIL_FLAGGED_LOG`` when that is set."""
    log.warning("email.flagged", message_id=event.message_id, score=event.score,
                sender_domain=event.sender_domain)
    path = os.environ.get("EMAIL_FLAGGED_LOG", "").strip()
    if path:
        line = (json.dumps(event.model_dump(), separators=(",", ":")) + "\n").encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write per line: safe from many processes
        finally:
            os.close(fd)

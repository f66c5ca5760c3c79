"""The taskwarren tasks of the email pipeline.

Two queues, so storage problems never hold up analysis and vice versa:

``email.ingest``
    :func:`ingest` reads one message file, analyses it and sends the result
    on. A file that cannot be read raises :class:`UnreadableMessageError`,
    which is never retried: the message goes to ``email.ingest.dead`` with
    the reason. Bad MIME is not an error: it is analysed and marked broken.
``email.store``
    :func:`store_result` upserts the result by Message-ID, so running it twice
    for the same message (at-least-once delivery) leaves one row.

Run a pool with ``taskwarren worker workers.email_analysis.tasks -c 2``;
``TASKWARREN_URL`` picks the broker and ``EMAIL_ANALYSIS_DB`` the results store.
"""

# No ``from __future__ import annotations`` here: taskwarren builds each task's
# argument model from ``inspect.signature``, which would then see the string
# "Analysis" instead of the class.
from functools import lru_cache

from taskwarren import task

from . import store
from .analysis import Analysis, AnalysisConfig, analyse
from .files import UnreadableMessageError, read_message_file

__all__ = ["INGEST_QUEUE", "STORE_QUEUE", "UnreadableMessageError", "ingest", "store_result"]

INGEST_QUEUE = "email.ingest"
STORE_QUEUE = "email.store"


@lru_cache(maxsize=1)
def _config() -> AnalysisConfig:
    return AnalysisConfig.from_env()


@task(queue=STORE_QUEUE, retries=5, time_limit=30)
def store_result(analysis: Analysis) -> None:
    """Upsert one analysis into the results store, keyed by its Message-ID."""
    store.upsert(analysis)


@task(
    queue=INGEST_QUEUE,
    retries=3,
    time_limit=60,
    dont_retry=(UnreadableMessageError,),
)
def ingest(path: str, message_id: str) -> None:
    """Read, parse, extract and score the message at ``path``; queue the result for storage.

    Raises:
        UnreadableMessageError: missing, unreadable or oversized file (dead-lettered
            at once, with the reason).
    """
    raw = read_message_file(path)
    result = analyse(raw, message_id, config=_config())
    store_result.send(analysis=result)

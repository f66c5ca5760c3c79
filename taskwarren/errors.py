"""The exception tree: every error taskwarren raises derives from one root.

::

    TaskwarrenError
    ├── ConfigurationError        bad settings, URL or task options
    │   └── NotSupportedError         the broker has no such feature (events on SQLite)
    ├── ArgumentsError            .send() arguments do not match the task signature
    ├── BrokerError               the broker failed us (mapped once, at the broker edge)
    │   ├── BrokerConnectionError     cannot reach the broker, or the link broke
    │   └── PublishError              a publish was not confirmed
    │       ├── UnroutableError           the broker returned it: no queue bound
    │       ├── PublishNackedError        the broker refused it (nack)
    │       └── PublishTimeoutError       no confirm within the deadline (blocked broker)
    ├── StoreError                the job store (the application's database) failed us
    │   └── StoreNotInitializedError  taskwarren's tables are missing: run `taskwarren store init`
    ├── MessageError              a queued message cannot be turned into a task call
    │   ├── DecodeError               not JSON, wrong content type, oversized, bad headers
    │   └── UnknownTaskError          no task registered under that name
    └── TimeLimitExceeded         a task ran past its hard time limit

``SoftTimeLimitExceeded`` is raised inside a running task and may be caught by it.
``Retry`` is control flow, not an error: a task raises it to ask for another attempt.
"""

from __future__ import annotations

from datetime import timedelta


class TaskwarrenError(Exception):
    """Root of every error taskwarren raises."""


class ConfigurationError(TaskwarrenError):
    """Settings, URLs or task options that cannot work."""


class NotSupportedError(ConfigurationError):
    """The configured broker does not support a feature (events, broadcasts, topology)."""


class ArgumentsError(TaskwarrenError, ValueError):
    """Arguments given to ``.send()`` do not fit the task's signature.

    Attributes:
        task: the task's registered name.
        fields: the names of the offending arguments.
    """

    def __init__(self, task: str, fields: list[str], detail: str) -> None:
        self.task = task
        self.fields = fields
        super().__init__(f"invalid arguments for task {task!r}: {detail}")


class BrokerError(TaskwarrenError):
    """The broker failed an operation."""


class BrokerConnectionError(BrokerError):
    """The broker cannot be reached, or the connection broke."""


class PublishError(BrokerError):
    """A message was not confirmed by the broker: it may not be stored."""


class UnroutableError(PublishError):
    """The broker returned a mandatory message: no queue is bound for it."""


class PublishNackedError(PublishError):
    """The broker refused to take responsibility for a message."""


class PublishTimeoutError(PublishError):
    """No confirm arrived before the deadline (for example, the broker blocks publishers)."""


class StoreError(TaskwarrenError):
    """The job store (taskwarren's tables in the application's database) failed an operation."""


class StoreNotInitializedError(StoreError):
    """taskwarren's tables are missing from the database: ``taskwarren store init`` makes them."""


class MessageError(TaskwarrenError):
    """A message taken from a queue cannot be run; it belongs in the dead-letter queue."""


class DecodeError(MessageError):
    """The message body or headers are malformed, of the wrong type or too large."""


class UnknownTaskError(MessageError):
    """The message names a task that this worker does not have."""


class TimeLimitExceeded(TaskwarrenError):
    """A task ran past its hard time limit; its process was replaced."""


class SoftTimeLimitExceeded(Exception):
    """Raised inside a task that ran past its soft time limit; the task may catch it."""


class Retry(Exception):
    """Raise from a task to run it again later; counts against the task's retries.

    Args:
        delay: seconds (or a timedelta) to wait before the next attempt; ``None`` uses
            the task's backoff.
        reason: a short text recorded with the retry.
    """

    def __init__(self, delay: float | timedelta | None = None, reason: str = "") -> None:
        if isinstance(delay, timedelta):
            delay = delay.total_seconds()
        self.delay_s = delay
        self.reason = reason
        super().__init__(reason or f"retry requested (delay={delay})")

"""Task: a function plus its options, its argument model, and ways to send it.

``.send()`` validates the call against the function's signature with a pydantic model
built once per task, serialises it to JSON, and returns the task id once the broker
has confirmed the persistent message.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from taskwarren.errors import ArgumentsError, ConfigurationError, DecodeError
from taskwarren.message import Envelope, encode
from taskwarren.retries import Backoff
from taskwarren.topology import check_pattern, check_queue_name

if TYPE_CHECKING:
    from taskwarren.app import Warren

P = ParamSpec("P")
R = TypeVar("R")

#: Queue used when a task names none.
DEFAULT_QUEUE = "default"


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """How a task is queued and run.

    Attributes:
        queue: the queue its messages go to.
        retries: how many times a failed call is tried again (0: dead-letter at once).
        backoff: delay policy between retries.
        retry_on: exception types that are retried; anything else is dead-lettered.
        dont_retry: exception types that are never retried (checked first).
        time_limit_s: hard limit: past it the call fails and the process is replaced.
        soft_time_limit_s: past it, ``SoftTimeLimitExceeded`` is raised in the task.
        subscribe: event patterns (``audit.#``, ``email.*``) whose events it receives.
        broadcast: ``.send()`` runs it once in every live worker process.
    """

    queue: str = DEFAULT_QUEUE
    retries: int = 0
    backoff: Backoff = field(default_factory=Backoff)
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    dont_retry: tuple[type[BaseException], ...] = ()
    time_limit_s: float | None = None
    soft_time_limit_s: float | None = None
    subscribe: tuple[str, ...] = ()
    broadcast: bool = False

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether a call that raised ``exc`` on ``attempt`` (0-based) is tried again."""
        if attempt >= self.retries or isinstance(exc, self.dont_retry):
            return False
        return isinstance(exc, self.retry_on)


@dataclass(frozen=True, slots=True)
class SendOptions:
    """Per-call options given through :meth:`Task.options`.

    Attributes:
        queue: send to this queue instead of the task's.
        delay_s: run no earlier than this many seconds from now.
        task_id: use this id (e.g. an outbox row's) instead of a new one.
    """

    queue: str | None = None
    delay_s: float = 0.0
    task_id: str | None = None


def _delay_from(delay: float | timedelta | None, eta: datetime | None) -> float:
    if delay is not None and eta is not None:
        raise ConfigurationError("give either delay or eta, not both")
    if eta is not None:
        if eta.tzinfo is None:
            raise ConfigurationError("eta must be an aware datetime (with a time zone)")
        return max(0.0, (eta - datetime.now(UTC)).total_seconds())
    if isinstance(delay, timedelta):
        return delay.total_seconds()
    return float(delay or 0.0)


def _argument_model(fn: Callable[..., Any], name: str) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except NameError as exc:
        raise ConfigurationError(
            f"task {name!r}: cannot resolve an argument annotation ({exc}); define the types "
            "it uses at module level"
        ) from None
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigurationError(
                f"task {name!r}: *args and **kwargs cannot be validated; name every argument"
            )
        annotation = hints.get(param.name, Any)
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (annotation, default)
    model_name = "".join(part.title() for part in fn.__name__.split("_")) + "Args"
    model: type[BaseModel] = create_model(
        model_name, __config__=ConfigDict(extra="forbid"), **fields
    )
    return model


def _arguments_error(task: str, exc: ValidationError) -> ArgumentsError:
    fields, details = [], []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(arguments)"
        fields.append(where)
        details.append(f"{where}: {err['msg']}")
    return ArgumentsError(task, fields, "; ".join(details))


class Task(Generic[P, R]):
    """A function registered with an app, runnable by workers.

    Call ``.send(...)`` with the function's own arguments to queue it; call the task
    itself to run the function here and now.
    """

    def __init__(
        self, app: Warren, fn: Callable[P, R], name: str, options: TaskOptions
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.task_options = options
        self.model = _argument_model(fn, name)
        self._signature = inspect.signature(fn)
        self._fields = tuple(self._signature.parameters)
        if options.subscribe:
            _check_subscriber(name, self._signature)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.task_options.queue}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function in this process, without the broker."""
        return self.fn(*args, **kwargs)

    @property
    def queue(self) -> str:
        """The queue this task's messages go to by default."""
        return self.task_options.queue

    def options(
        self,
        *,
        queue: str | None = None,
        delay: float | timedelta | None = None,
        eta: datetime | None = None,
        task_id: str | None = None,
    ) -> BoundTask[P, R]:
        """Per-call options: ``task.options(delay=30).send(...)``.

        Args:
            queue: send to this queue instead of the task's own.
            delay: seconds (or a timedelta) to wait before the task may run.
            eta: an aware datetime before which the task does not run.
            task_id: the id to give the message (default: a new UUID4).
        """
        if queue is not None:
            check_queue_name(queue)
        return BoundTask(self, SendOptions(queue, _delay_from(delay, eta), task_id))

    def send(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Validate the call, publish it persistently and return its task id.

        Returns once the broker has confirmed the message.

        Raises:
            ArgumentsError: the arguments do not fit the signature (the field is named).
            PublishError: the broker did not confirm the message.
        """
        return BoundTask(self, SendOptions()).send(*args, **kwargs)

    def send_many(self, calls: Iterable[Mapping[str, Any]]) -> list[str]:
        """Send one task per mapping of keyword arguments, with pipelined confirms.

        Every call is validated before anything is published. Returns the task ids in
        order, once every message is confirmed.
        """
        return BoundTask(self, SendOptions()).send_many(calls)

    def encode_call(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bytes:
        """Validate a call and return its JSON body.

        Raises:
            ArgumentsError: wrong arguments, with the offending fields named.
        """
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ArgumentsError(self.name, _fields_in(str(exc), self._fields), str(exc)) from None
        try:
            validated = self.model.model_validate(bound.arguments)
        except ValidationError as exc:
            raise _arguments_error(self.name, exc) from None
        return validated.model_dump_json().encode()

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """The event patterns this task subscribes to."""
        return self.task_options.subscribe

    def encode_event(self, payload: Any) -> bytes:
        """Validate an event payload as this subscriber's first argument; its JSON body.

        Raises:
            ArgumentsError: the payload does not fit the subscriber's annotation.
        """
        try:
            validated = self.model.model_validate({self._fields[0]: payload})
        except ValidationError as exc:
            raise _arguments_error(self.name, exc) from None
        return json_dumps(validated.model_dump(mode="json")[self._fields[0]])

    def decode_event(self, body: bytes) -> dict[str, Any]:
        """Validate an event copy's body as this subscriber's first argument.

        Raises:
            DecodeError: the body is not JSON.
            ArgumentsError: the event does not fit the subscriber's annotation.
        """
        return self.decode_call(b'{"' + self._fields[0].encode() + b'":' + body + b"}")

    def decode_call(self, body: bytes) -> dict[str, Any]:
        """Validate a message body against the signature; keyword arguments for the call.

        Raises:
            DecodeError: the body is not JSON.
            ArgumentsError: the body does not fit the signature.
        """
        try:
            validated = self.model.model_validate_json(body)
        except ValidationError as exc:
            if any(err["type"] == "json_invalid" for err in exc.errors()):
                raise DecodeError(f"body is not valid JSON: {exc.errors()[0]['msg']}") from None
            raise _arguments_error(self.name, exc) from None
        return {name: getattr(validated, name) for name in self._fields}


def _check_subscriber(name: str, signature: inspect.Signature) -> None:
    params = list(signature.parameters.values())
    if not params or any(p.default is inspect.Parameter.empty for p in params[1:]):
        raise ConfigurationError(
            f"task {name!r} subscribes to events: its first argument receives the event "
            "(annotate it with the event's pydantic model); any others need defaults"
        )


def _fields_in(message: str, fields: tuple[str, ...]) -> list[str]:
    named = [f for f in fields if f"'{f}'" in message]
    return named or ["(arguments)"]


class BoundTask(Generic[P, R]):
    """A task with per-call options, from :meth:`Task.options`."""

    def __init__(self, task: Task[P, R], options: SendOptions) -> None:
        self.task = task
        self.send_options = options

    def _envelope(self, body: bytes, task_id: str | None) -> Envelope:
        opts = self.send_options
        queue = opts.queue or self.task.queue
        eta = datetime.now(UTC) + timedelta(seconds=opts.delay_s) if opts.delay_s > 0 else None
        return encode(self.task.name, queue, body, task_id=task_id, eta=eta)

    def send(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Validate, publish and confirm one call; returns its task id.

        A broadcast task's call goes to every worker process alive now instead.
        """
        return self._send_body(self.task.encode_call(args, kwargs), self.send_options.task_id)

    def _send_body(self, body: bytes, task_id: str | None) -> str:
        self.task.app.check_size(body)
        envelope = self._envelope(body, task_id)
        if not self.task.task_options.broadcast:
            self.task.app.publish(envelope.queue, [envelope], self.send_options.delay_s)
        elif self.send_options.delay_s > 0:
            raise ConfigurationError(
                f"task {self.task.name!r} is a broadcast: it cannot be delayed (a delayed "
                "copy could only reach the processes alive when it was sent)"
            )
        else:
            self.task.app.publish_broadcast(envelope)
        return envelope.message_id

    def send_many(self, calls: Iterable[Mapping[str, Any]]) -> list[str]:
        """Validate every call, then publish them all with pipelined confirms."""
        if self.send_options.task_id is not None:
            raise ConfigurationError("task_id cannot be shared by many calls")
        if self.task.task_options.broadcast:
            bodies = [self.task.encode_call((), kwargs) for kwargs in calls]
            return [self._send_body(body, None) for body in bodies]
        envelopes = []
        for kwargs in calls:
            body = self.task.encode_call((), kwargs)
            self.task.app.check_size(body)
            envelopes.append(self._envelope(body, None))
        if envelopes:
            self.task.app.publish(envelopes[0].queue, envelopes, self.send_options.delay_s)
        return [e.message_id for e in envelopes]


def task_options(base: TaskOptions, **changes: Any) -> TaskOptions:
    """``base`` with ``changes`` applied and checked."""
    opts = replace(base, **changes)
    check_queue_name(opts.queue)
    if opts.retries < 0:
        raise ConfigurationError("retries must be >= 0")
    for limit in (opts.time_limit_s, opts.soft_time_limit_s):
        if limit is not None and limit <= 0:
            raise ConfigurationError("time limits must be positive")
    for pattern in opts.subscribe:
        check_pattern(pattern)
    if opts.broadcast and opts.subscribe:
        raise ConfigurationError("a task is either a broadcast or an event subscriber")
    if opts.broadcast and opts.retries:
        raise ConfigurationError(
            "a broadcast runs at most once per process and cannot be retried: its retry "
            "would have to come back to that one process; use retries=0"
        )
    return opts


def json_dumps(value: Any) -> bytes:
    """Compact JSON bytes (used where no task model is at hand)."""
    return json.dumps(value, separators=(",", ":")).encode()

"""Task: a function plus its options, its argument model, and ways to send it.

``.send()`` validates the call against the function's signature with a pydantic model
built once per task, serialises it to JSON, builds the envelope and hands it to its
:class:`Sender` (the app, whose ``enqueue`` is the one send path); it returns the task
id once the broker has confirmed the persistent message.
"""

from __future__ import annotations

import functools
import inspect
import json
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, ParamSpec, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from taskwarren.errors import ArgumentsError, ConfigurationError, DecodeError
from taskwarren.message import MAX_TASK_ID_BYTES, Envelope, encode
from taskwarren.options import (
    DEFAULT_QUEUE,
    TaskOptionArgs,
    TaskOptions,
    bind_call,
    check_scheduled,
    check_subscriber,
    plain_call,
    task_options,
)
from taskwarren.store.jobs import storable
from taskwarren.topology import check_queue_name

__all__ = ["DEFAULT_QUEUE", "BoundTask", "SendOptions", "Sender", "Task", "TaskOptionArgs",
           "TaskOptions", "json_dumps", "task_options"]

P = ParamSpec("P")
R = TypeVar("R")

class Sender(Protocol):
    """Where a task's envelopes go: the app's one send path."""

    def enqueue(self, queue: str, envelopes: Sequence[Envelope], *, delay_s: float = 0.0,
                db: object | None = None, unique_key: str | None = None) -> str | None:
        """Check, publish and confirm ``envelopes`` to ``queue`` (or, with ``db``, write
        them to the outbox in that connection's transaction); with ``unique_key``, the
        id of the live job holding it."""

    def broadcast(self, envelope: Envelope) -> None:
        """Check, publish and confirm one broadcast call to every live worker process."""

    def check_size(self, body: bytes) -> None:
        """Refuse a body larger than the app lets a message be (``PublishError``)."""


@dataclass(frozen=True, slots=True)
class SendOptions:
    """Per-call options given through :meth:`Task.options`.

    Attributes:
        queue: send to this queue instead of the task's.
        delay_s: run no earlier than this many seconds from now.
        task_id: use this id (e.g. an outbox row's) instead of a new one.
        db: the application's database connection: the call becomes an outbox row in
            its open transaction instead of a message (see :mod:`taskwarren.store`).
        unique_key: at most one live job per key (see :meth:`Task.options`).
    """

    queue: str | None = None
    delay_s: float = 0.0
    task_id: str | None = None
    db: object | None = None
    unique_key: str | None = None


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
        self, app: Sender, fn: Callable[P, R], name: str, options: TaskOptions
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.task_options = options
        #: ``async def``: a worker awaits it on its child's event loop.
        self.is_async = _is_async(fn, name)
        self.model = _argument_model(fn, name)
        self._signature = inspect.signature(fn)
        self._fields = tuple(self._signature.parameters)
        self._plain = plain_call(self._signature)
        if options.subscribe:
            check_subscriber(name, self._signature)
        if options.scheduled:
            check_scheduled(name, self._signature)
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
        self, *,
        queue: str | None = None,
        delay: float | timedelta | None = None,
        eta: datetime | None = None,
        task_id: str | None = None,
        db: object | None = None,
        unique_key: str | None = None,
    ) -> BoundTask[P, R]:
        """Per-call options: ``task.options(delay=30).send(...)``.

        Args:
            queue: send to this queue instead of the task's own.
            delay: seconds (or a timedelta) to wait before the task may run.
            eta: an aware datetime before which the task does not run.
            task_id: the id to give the message (default: a new UUID4).
            db: send through the outbox, in this connection's open transaction: a DB-API
                connection of sqlite3, psycopg 3, PyMySQL or mysqlclient, a SQLAlchemy
                ``Connection`` or ``Session``, or Django's (in ``transaction.atomic()``).
                The task runs (at least once) if that transaction commits, never if it
                rolls back. A relay publishes it.
            unique_key: while a job sent with this key is queued, scheduled, running or
                retrying, a send with the same key enqueues nothing and returns that
                job's id. The job store enforces it (a unique index, written in the
                sending transaction: ``db``'s, else one of the app's own). Needs a job
                store; at most 255 characters.

        Raises:
            TypeError: ``db`` is not a connection of a supported kind.
            ConfigurationError: an empty or over-long ``unique_key`` or ``task_id``.
        """
        if queue is not None:
            check_queue_name(queue)
        if task_id is not None and (not 0 < len(task_id.encode("utf-8", "surrogateescape"))
                                    <= MAX_TASK_ID_BYTES or storable(task_id) != task_id):
            raise ConfigurationError(f"task_id must be 1 to {MAX_TASK_ID_BYTES} bytes of text "
                                     "(UTF-8, no NUL)")
        if db is not None:
            from taskwarren.store.outbox import check_db

            check_db(db)  # an unsupported kind fails here, before any call is made
        if unique_key is not None and not 0 < len(unique_key) <= 255:
            raise ConfigurationError("unique_key must be 1 to 255 characters")
        return BoundTask(self, SendOptions(queue, _delay_from(delay, eta), task_id, db,
                                           unique_key))

    def run_now(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here with what a worker would receive from ``.send()``.

        The call is validated and serialised as ``.send()`` does, put in an envelope
        and size-checked, then its body is decoded from JSON as a worker decodes it: the
        function gets the arguments a worker would pass it (models rebuilt, tuples
        become lists where annotated so, ...). Returns what the function returns. No
        broker, middleware, time limit or retry: an exception propagates. For an
        ``async def`` task it returns the coroutine: ``await task.run_now(...)``.

        Raises:
            ArgumentsError: the arguments do not fit the signature (as ``.send()``).
            PublishError: the body is larger than ``max_message_bytes`` (as ``.send()``).
        """
        envelope = encode(self.name, self.queue, self.encode_call(args, kwargs))
        self.app.check_size(envelope.body)
        return self.fn(**self.decode_call(envelope.body))  # type: ignore[call-arg]

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
            arguments = bind_call(self._signature, self._plain, args, kwargs)
        except TypeError as exc:
            raise ArgumentsError(self.name, _fields_in(str(exc), self._fields), str(exc)) from None
        try:
            validated = self.model.model_validate(arguments)
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


def _is_async(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` is a coroutine function (or an object with an ``async def __call__``).

    A worker awaits such a task on its child's event loop. An async generator is refused:
    nothing would iterate it, and the message would be acked without the work done.
    """
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    candidates = [target]
    if not inspect.isfunction(target) and not inspect.ismethod(target):
        candidates.append(type(target).__call__)
    if any(inspect.isasyncgenfunction(c) for c in candidates):
        raise ConfigurationError(f"task {name!r} is an async generator: nothing would iterate "
                                 "it (the message would be acked undone); use async def that "
                                 "returns")
    return any(inspect.iscoroutinefunction(c) for c in candidates)


def _fields_in(message: str, fields: tuple[str, ...]) -> list[str]:
    named = [f for f in fields if f"'{f}'" in message]
    return named or ["(arguments)"]


class BoundTask(Generic[P, R]):
    """A task with per-call options, from :meth:`Task.options`."""

    def __init__(self, task: Task[P, R], options: SendOptions) -> None:
        self.task = task
        self.send_options = options

    def _eta(self) -> datetime | None:
        delay_s = self.send_options.delay_s
        return datetime.now(UTC) + timedelta(seconds=delay_s) if delay_s > 0 else None

    def _envelope(self, body: bytes, task_id: str | None,
                  eta: datetime | None = None) -> Envelope:
        queue = self.send_options.queue or self.task.queue
        return encode(self.task.name, queue, body, task_id=task_id, eta=eta or self._eta())

    def send(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Validate, publish and confirm one call; returns its task id.

        A broadcast task's call goes to every worker process alive now instead.
        """
        return self._send_body(self.task.encode_call(args, kwargs), self.send_options.task_id)

    def _send_body(self, body: bytes, task_id: str | None) -> str:
        envelope = self._envelope(body, task_id)
        if not self.task.task_options.broadcast:
            holder = self.task.app.enqueue(envelope.queue, [envelope],
                                           delay_s=self.send_options.delay_s,
                                           db=self.send_options.db,
                                           unique_key=self.send_options.unique_key)
            if holder is not None:
                return holder
        elif self.send_options.db is not None:
            raise ConfigurationError(f"task {self.task.name!r} is a broadcast: it reaches the "
                                     "processes alive when it is sent, so it cannot wait in "
                                     "the outbox (db=)")
        elif self.send_options.unique_key is not None:
            raise ConfigurationError(f"task {self.task.name!r} is a broadcast: it is not a "
                                     "job of the store, so it takes no unique_key")
        elif self.send_options.delay_s > 0:
            raise ConfigurationError(
                f"task {self.task.name!r} is a broadcast: it cannot be delayed (a delayed "
                "copy could only reach the processes alive when it was sent)"
            )
        else:
            self.task.app.broadcast(envelope)
        return envelope.message_id

    def send_many(self, calls: Iterable[Mapping[str, Any]]) -> list[str]:
        """Validate every call, then publish them all with pipelined confirms."""
        if self.send_options.task_id is not None:
            raise ConfigurationError("task_id cannot be shared by many calls")
        if self.send_options.unique_key is not None:
            raise ConfigurationError("unique_key cannot be shared by many calls")
        bodies = [self.task.encode_call((), kwargs) for kwargs in calls]
        if self.task.task_options.broadcast and self.send_options.db is not None:
            raise ConfigurationError(f"task {self.task.name!r} is a broadcast: it reaches the "
                                     "processes alive when it is sent, so it cannot wait in "
                                     "the outbox (db=)")
        if self.task.task_options.broadcast:
            return [self._send_body(body, None) for body in bodies]
        eta = self._eta()  # one for all: the outbox relay publishes them together
        envelopes = [self._envelope(body, None, eta) for body in bodies]
        if envelopes:
            self.task.app.enqueue(envelopes[0].queue, envelopes,
                                  delay_s=self.send_options.delay_s, db=self.send_options.db)
        return [e.message_id for e in envelopes]


def json_dumps(value: Any) -> bytes:
    """Compact JSON bytes (used where no task model is at hand)."""
    return json.dumps(value, separators=(",", ":")).encode()

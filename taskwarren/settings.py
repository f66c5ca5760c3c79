"""Settings: one typed object, built from ``TASKWARREN_*`` variables only when asked.

Nothing here runs at import time. ``Settings.from_env()`` reads the environment;
an unknown ``TASKWARREN_*`` variable is an error rather than a silent typo, except
the service link variables Kubernetes injects for a Service named ``taskwarren-*``.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from taskwarren.errors import ConfigurationError
from taskwarren.urls import (
    AMQP_SCHEMES,
    EVENTS_QUEUE_PREFIX,
    events_queue,
    mask_url,
    parse_urls,
    scheme_of,
)

__all__ = ["DEFAULT_URL", "Settings", "mask_url"]

#: URL schemes a job store may have.
STORE_SCHEMES = frozenset(("postgresql", "postgres", "mysql", "mariadb", "sqlite"))
#: The broker used when no URL is configured: the embedded, durable SQLite broker.
DEFAULT_URL = "sqlite:///taskwarren.db"

#: Variables read by ``from_env`` (name -> Settings field).
_ENV_FIELDS = {
    "TASKWARREN_URL": "url",
    "TASKWARREN_QUEUE_TYPE": "queue_type",
    "TASKWARREN_DELIVERY_LIMIT": "delivery_limit",
    "TASKWARREN_POISON_KILLS": "poison_kills",
    "TASKWARREN_MAX_MESSAGE_BYTES": "max_message_bytes",
    "TASKWARREN_HEARTBEAT_S": "heartbeat_s",
    "TASKWARREN_CONNECT_TIMEOUT_S": "connect_timeout_s",
    "TASKWARREN_PUBLISH_TIMEOUT_S": "publish_timeout_s",
    "TASKWARREN_GRACE_S": "grace_s",
    "TASKWARREN_PREFETCH": "prefetch",
    "TASKWARREN_CONSUMER_TIMEOUT_S": "consumer_timeout_s",
    "TASKWARREN_STORE_URL": "store_url",
    "TASKWARREN_JOBS": "jobs",
    "TASKWARREN_JOB_RETENTION_S": "job_retention_s",
    "TASKWARREN_JOBS_QUEUE": "jobs_queue",
    "TASKWARREN_SCHEDULE_CATCH_UP_S": "schedule_catch_up_s",
    "TASKWARREN_WEB_TOKEN": "web_token",
    "TASKWARREN_MANAGEMENT_URL": "management_url",
}
#: The shortest dashboard token accepted (characters).
MIN_WEB_TOKEN_CHARS = 16
#: Prefixes of variables that belong to the test suite or benchmarks, not to settings.
_ENV_IGNORED_PREFIXES = ("TASKWARREN_TEST_", "TASKWARREN_BENCH_")
#: The names Kubernetes gives a Service's link variables (``enableServiceLinks``, on by
#: default), where a Service ``taskwarren-x`` gives ``<SVC>`` = ``TASKWARREN_X``. One name
#: can have several readings (``<SVC>_SERVICE_PORT`` is also ``<SVC>_SERVICE`` + ``_PORT``),
#: so each shape is tried on its own.
_SVC = r"TASKWARREN(?:_[A-Z0-9_]+)?"
_SERVICE_HOST_RE = re.compile(_SVC + r"_SERVICE_HOST")
_SERVICE_PORT_RE = re.compile(_SVC + r"_SERVICE_PORT(?:_[A-Z0-9_]+)?")
_FIRST_PORT_RE = re.compile(_SVC + r"_PORT")
_PORT_RE = re.compile(
    _SVC + r"_PORT_(?P<port>[0-9]+)_(?P<proto>TCP|UDP|SCTP)(?:_(?P<part>PROTO|PORT|ADDR))?"
)
#: The value of a docker-link URL variable: ``tcp://10.0.0.1:5672``, ``tcp://[fd00::1]:5672``.
_LINK_URL_RE = re.compile(r"(tcp|udp|sctp)://(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):([0-9]+)")


class Settings(BaseModel):
    """Everything taskwarren can be configured with.

    Attributes:
        url: broker URL; ``amqp://user:pass@host:5672/vhost?heartbeat=10`` (a
            comma-separated list for a cluster; see :mod:`taskwarren.urls`),
            ``sqlite:///path.db``, or ``memory://``. An AMQP URL is checked here, when
            the settings are built, so a bad one stops a program at its start.
        queue_type: ``quorum`` (replicated, the default) or ``classic``.
        delivery_limit: the broker's own redelivery backstop on quorum queues.
        poison_kills: a message that killed this many worker processes is dead-lettered.
        max_message_bytes: larger bodies are refused at send and dead-lettered at consume.
        heartbeat_s: AMQP heartbeat interval proposed to the broker.
        connect_timeout_s: how long one connection attempt may take.
        publish_timeout_s: how long ``.send()`` waits for a confirm (a blocked broker
            makes it fail after this, with an error that says so).
        grace_s: how long a stopping worker lets running tasks finish.
        prefetch: pin the per-consumer prefetch; ``None`` adapts it to task durations.
        consumer_timeout_s: the broker's consumer timeout, to warn about tasks whose
            time limit exceeds it.
        store_url: the job store, taskwarren's tables in the application's database:
            ``postgresql://user:pass@host/db``, ``mysql://user:pass@host/db`` (MySQL 8 or
            MariaDB 10.6+) or ``sqlite:///path.db``. ``None``: with the embedded SQLite
            broker, its own database file; with RabbitMQ, no store.
        jobs: record every job's life in the store's ``taskwarren_jobs`` (for
            ``taskwarren jobs``, ``app.jobs``, cancel and ``unique_key``). ``None``: on
            when ``store_url`` is set, else off.
        job_retention_s: finished jobs older than this are pruned (``0``: kept forever).
        jobs_queue: the queue job events travel on to the projector. ``None``: one of the
            store's own (:func:`taskwarren.store.jobs.events_queue`).
        schedule_catch_up_s: a schedule's ticks missed while no scheduler ran are
            enqueued, once each, if they are at most this old; older ones are skipped
            and reported. At least 10 s: a scheduler is always a little late.
        web_token: the secret that unlocks the dashboard's actions (``taskwarren web``);
            without it the dashboard is read-only. Never logged or shown.
        management_url: the RabbitMQ management HTTP API
            (``http://user:password@rabbit:15672/``), which the dashboard reads queue
            depths, rates and consumers from; without it, or when it fails, what AMQP
            tells. Its password is never shown.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = DEFAULT_URL
    queue_type: Literal["quorum", "classic"] = "quorum"
    delivery_limit: int = Field(default=50, ge=2)
    poison_kills: int = Field(default=3, ge=1)
    max_message_bytes: int = Field(default=1024 * 1024, ge=1024)
    heartbeat_s: int = Field(default=30, ge=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    publish_timeout_s: float = Field(default=30.0, gt=0)
    grace_s: float = Field(default=30.0, ge=0)
    prefetch: int | None = Field(default=None, ge=1)
    consumer_timeout_s: float = Field(default=1800.0, gt=0)
    store_url: str | None = None
    jobs: bool | None = None
    job_retention_s: float = Field(default=7 * 24 * 3600.0, ge=0)
    jobs_queue: str | None = None
    schedule_catch_up_s: float = Field(default=3600.0, ge=10)
    web_token: str | None = Field(default=None, repr=False)
    management_url: str | None = None

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: object
    ) -> Settings:
        """Build settings from ``TASKWARREN_*`` variables, then explicit overrides.

        Raises:
            ConfigurationError: an unknown ``TASKWARREN_*`` variable, or a bad value.
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for key, value in env.items():
            if not key.startswith("TASKWARREN_") or key.startswith(_ENV_IGNORED_PREFIXES):
                continue
            field = _ENV_FIELDS.get(key)
            if field is None:
                if _is_service_link(key, value):
                    continue
                raise ConfigurationError(_unknown(key))
            if value != "":
                values[field] = value
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls._validated(values)

    def replace(self, **changes: object) -> Settings:
        """A copy with ``changes``, checked like :meth:`from_env` (``None`` keeps a value).

        Raises:
            ConfigurationError: a bad value.
        """
        values = self.model_dump()
        values.update({k: v for k, v in changes.items() if v is not None})
        return self._validated(values)

    @classmethod
    def _validated(cls, values: dict[str, object]) -> Settings:
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigurationError(_describe(exc)) from None

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        # Raises ConfigurationError, which pydantic lets through untouched: its own
        # errors would quote the URL, password and all.
        if scheme_of(url) in AMQP_SCHEMES:
            parse_urls(url)
        return url

    @field_validator("store_url")
    @classmethod
    def _check_store_url(cls, url: str | None) -> str | None:
        if url is not None and scheme_of(url) not in STORE_SCHEMES:
            raise ConfigurationError(
                f"TASKWARREN_STORE_URL {mask_url(url)!r}: use postgresql://, mysql:// "
                "(MySQL 8 or MariaDB 10.6+) or sqlite:///")
        return url

    @field_validator("web_token")
    @classmethod
    def _check_web_token(cls, token: str | None) -> str | None:
        if token is not None and len(token) < MIN_WEB_TOKEN_CHARS:
            raise ConfigurationError(f"TASKWARREN_WEB_TOKEN is too short: give at least "
                                     f"{MIN_WEB_TOKEN_CHARS} characters (a random one: "
                                     "python -c 'import secrets; print(secrets.token_urlsafe())')")
        return token

    @field_validator("management_url")
    @classmethod
    def _check_management_url(cls, url: str | None) -> str | None:
        if url is not None and scheme_of(url) not in ("http", "https"):
            raise ConfigurationError(f"TASKWARREN_MANAGEMENT_URL {mask_url(url)!r}: give the "
                                     "management API's http:// or https:// URL")
        return url

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # repr() and str() of settings end up in logs and tracebacks: no password.
        for name, value in super().__repr_args__():
            masked = name in ("url", "store_url", "management_url") and isinstance(value, str)
            yield name, mask_url(value) if masked else value

    @property
    def scheme(self) -> str:
        """The URL scheme: ``amqp``, ``amqps``, ``sqlite`` or ``memory``."""
        return scheme_of(self.url)

    @property
    def effective_store_url(self) -> str | None:
        """The job store's URL: ``store_url``, else the embedded SQLite broker's file."""
        if self.store_url is not None:
            return self.store_url
        return self.url if self.scheme == "sqlite" else None

    @property
    def jobs_events_queue(self) -> str:
        """The queue job events travel on: ``jobs_queue``, else the store's own."""
        if self.jobs_queue is not None:
            return self.jobs_queue
        url = self.effective_store_url
        return events_queue(url) if url is not None else EVENTS_QUEUE_PREFIX

    @property
    def records_jobs(self) -> bool:
        """Whether jobs are recorded in the store (``jobs``, else whether ``store_url``
        is set); never without a store."""
        wanted = self.store_url is not None if self.jobs is None else self.jobs
        return wanted and self.effective_store_url is not None


def _unknown(key: str) -> str:
    hint = difflib.get_close_matches(key, _ENV_FIELDS, n=1)
    known = ", ".join(sorted(_ENV_FIELDS))
    if hint:
        return f"unknown setting {key} (did you mean {hint[0]}?); known: {known}"
    return f"unknown setting {key}; known: {known}"


def _is_service_link(key: str, value: str) -> bool:
    """Whether ``key=value`` is exactly what Kubernetes injects for a Service.

    The value is checked as well as the name, so that a setting a user invented in
    the same shape (``TASKWARREN_BROKER_PORT=5672``) is still reported, not ignored.
    """
    if _SERVICE_HOST_RE.fullmatch(key) and _is_ip(value):
        return True
    if _SERVICE_PORT_RE.fullmatch(key) and _is_port(value):
        return True
    url = _LINK_URL_RE.fullmatch(value)
    if _FIRST_PORT_RE.fullmatch(key) and url and _is_ip(url[2] or url[3]) and _is_port(url[4]):
        return True
    name = _PORT_RE.fullmatch(key)
    if name is None:
        return False
    proto, port = name["proto"].lower(), name["port"]
    if name["part"] == "PROTO":
        return value == proto
    if name["part"] == "PORT":
        return value == port and _is_port(value)
    if name["part"] == "ADDR":
        return _is_ip(value)
    return url is not None and url[1] == proto and _is_ip(url[2] or url[3]) and url[4] == port


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_port(value: str) -> bool:
    return value.isascii() and value.isdigit() and 0 < int(value) < 65536


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {err['msg']}")
    return "invalid settings: " + "; ".join(parts)


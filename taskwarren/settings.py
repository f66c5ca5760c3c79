"""Settings: one typed object, built from ``TASKWARREN_*`` variables only when asked.

Nothing here runs at import time. ``Settings.from_env()`` reads the environment;
an unknown ``TASKWARREN_*`` variable is an error rather than a silent typo.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from taskwarren.errors import ConfigurationError

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
}
#: Prefixes of variables that belong to the test suite or benchmarks, not to settings.
_ENV_IGNORED_PREFIXES = ("TASKWARREN_TEST_", "TASKWARREN_BENCH_")


class Settings(BaseModel):
    """Everything taskwarren can be configured with.

    Attributes:
        url: broker URL; ``amqp://user:pass@host:5672/vhost`` (a comma-separated list
            for a cluster), ``sqlite:///path.db``, or ``memory://``.
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
                known = ", ".join(sorted(_ENV_FIELDS))
                raise ConfigurationError(f"unknown setting {key}; known: {known}")
            if value != "":
                values[field] = value
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigurationError(_describe(exc)) from None

    @property
    def scheme(self) -> str:
        """The URL scheme: ``amqp``, ``amqps``, ``sqlite`` or ``memory``."""
        return urlsplit(self.url.split(",")[0].strip()).scheme


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {err['msg']}")
    return "invalid settings: " + "; ".join(parts)


_PASSWORD_RE = re.compile(r"(?<=://)([^:/@,]*):([^@/,]*)@")


def mask_url(url: str) -> str:
    """Return ``url`` (or a comma-separated list of URLs) with every password masked."""
    masked = []
    for part in url.split(","):
        split = urlsplit(part.strip())
        if split.password is None:
            masked.append(_PASSWORD_RE.sub(r"\1:***@", part.strip()))
            continue
        netloc = split.netloc.rsplit("@", 1)
        user = netloc[0].split(":", 1)[0]
        masked.append(urlunsplit(split._replace(netloc=f"{user}:***@{netloc[1]}")))
    return ",".join(masked)

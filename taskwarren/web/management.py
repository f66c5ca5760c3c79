"""Queue figures from the RabbitMQ management HTTP API (stdlib ``urllib``, short timeout).

AMQP tells a queue's ready messages and consumers (a passive declare), not its unacked
messages or its rates. The management API tells all of them: with
``TASKWARREN_MANAGEMENT_URL`` set, the dashboard asks it first, and falls back to AMQP
(saying so on the page) when it fails. Nothing here shows the URL's password: errors
name the masked URL and the kind of failure only.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from taskwarren.errors import BrokerError
from taskwarren.topology import dead_queue
from taskwarren.urls import mask_url

__all__ = ["ManagementAPI", "ManagementError", "ManagementStats"]

#: How long one request to the management API may take.
TIMEOUT_S = 2.0
#: The most bytes read from one answer (a queue's JSON is a few kilobytes).
MAX_ANSWER_BYTES = 1024 * 1024


class ManagementError(BrokerError):
    """The management API did not answer, or not as expected (the message holds no
    password)."""


@dataclass(frozen=True, slots=True)
class ManagementStats:
    """A queue as the management API sees it.

    Attributes:
        ready: messages waiting to be delivered.
        unacked: delivered and not yet acked.
        consumers: consumers attached.
        dead: messages in its dead-letter queue (``None``: that queue does not exist).
        publish_rate: messages published to it per second (recent average).
        deliver_rate: messages delivered (or fetched) per second.
        ack_rate: messages acked per second.
    """

    ready: int
    unacked: int
    consumers: int
    dead: int | None
    publish_rate: float
    deliver_rate: float
    ack_rate: float


class ManagementAPI:
    """The management API at ``url`` (``http://user:password@host:15672/``), for ``vhost``.

    Args:
        url: the API's base URL, credentials in it.
        vhost: the virtual host of the app's queues.
        timeout_s: how long one request may take.
    """

    def __init__(self, url: str, vhost: str, timeout_s: float = TIMEOUT_S) -> None:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
        self._base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.location = mask_url(url)
        self.vhost = vhost
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"<ManagementAPI {self.location}>"

    def stats(self, queue: str) -> ManagementStats:
        """The figures of ``queue`` and the size of its dead-letter queue.

        Raises:
            ManagementError: no answer within the timeout, an HTTP error (404: no such
                queue), or an answer that is not a queue's JSON.
        """
        main = self._queue(queue)
        try:
            dead: int | None = _count(self._queue(dead_queue(queue)), "messages")
        except ManagementError as exc:
            if "HTTP 404" not in str(exc):
                raise
            dead = None
        details = main.get("message_stats")
        details = details if isinstance(details, dict) else {}
        return ManagementStats(
            ready=_count(main, "messages_ready"), unacked=_count(main, "messages_unacknowledged"),
            consumers=_count(main, "consumers"), dead=dead,
            publish_rate=_rate(details, "publish_details"),
            deliver_rate=_rate(details, "deliver_get_details"),
            ack_rate=_rate(details, "ack_details"))

    def _queue(self, name: str) -> dict[str, Any]:
        url = f"{self._base}/api/queues/{quote(self.vhost, safe='')}/{quote(name, safe='')}"
        request = urllib.request.Request(url, headers={"Authorization": self._auth,
                                                       "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                body = answer.read(MAX_ANSWER_BYTES + 1)
        except urllib.error.HTTPError as exc:
            exc.close()
            raise ManagementError(f"management API at {self.location}: HTTP {exc.code}") \
                from None
        except (OSError, ValueError) as exc:  # URLError, timeouts, refused, bad URL
            reason = getattr(exc, "reason", None) or exc
            raise ManagementError(f"management API at {self.location}: "
                                  f"{type(reason).__name__}") from None
        if len(body) > MAX_ANSWER_BYTES:
            raise ManagementError(f"management API at {self.location}: answer too large")
        try:
            found = json.loads(body)
        except ValueError:
            raise ManagementError(f"management API at {self.location}: not JSON") from None
        if not isinstance(found, dict):
            raise ManagementError(f"management API at {self.location}: not a queue")
        return found


def _count(queue: dict[str, Any], name: str) -> int:
    value = queue.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ManagementError(f"management API: {name} is not a count")
    return value


def _rate(details: dict[str, Any], name: str) -> float:
    # The API leaves out the rates of a queue that saw no such traffic lately: zero.
    found = details.get(name)
    rate = found.get("rate") if isinstance(found, dict) else None
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        return 0.0
    return float(rate)

"""Queue figures from the RabbitMQ management HTTP API (stdlib ``urllib``, short timeout).

AMQP tells a queue's ready messages and consumers (a passive declare), not its unacked
messages or its rates, nor which queues exist. The management API tells all of them:
with ``TASKWARREN_MANAGEMENT_URL`` set, the dashboard asks it first, and falls back to
AMQP (saying so on the page) when it fails; ``taskwarren queues`` lists every taskwarren
queue of the vhost through it. Nothing here shows the URL's password: errors name the
masked URL and the kind of failure only.

Outside :mod:`taskwarren.web` so that the command line uses it without the web extra.
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
from taskwarren.topology import DEAD_LETTER_EXCHANGE, DEAD_SUFFIX, dead_queue
from taskwarren.urls import Endpoint, mask_url

__all__ = ["ManagementAPI", "ManagementError", "ManagementStats", "QueueDepths",
           "management_url_for"]

#: How long one request to the management API may take.
TIMEOUT_S = 2.0
#: The most bytes read from one answer (a queue's JSON is a few kilobytes).
MAX_ANSWER_BYTES = 1024 * 1024
#: The most bytes of the vhost's queue list (a few hundred bytes a queue, columns chosen).
MAX_LIST_BYTES = 32 * 1024 * 1024
#: The columns asked for when listing queues (the rest of a queue's JSON is left out).
LIST_COLUMNS = "name,arguments,messages_ready,messages_unacknowledged,consumers,messages"
#: The management API's ports, by the AMQP URL's scheme (the plugin's defaults).
DEFAULT_PORTS = {"amqp": ("http", 15672), "amqps": ("https", 15671)}


def management_url_for(endpoint: Endpoint) -> str:
    """The management API's URL on the broker's host, at the plugin's default port, with
    the AMQP user and password (``https`` for ``amqps``)."""
    scheme, port = DEFAULT_PORTS["amqps" if endpoint.ssl else "amqp"]
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    credentials = f"{quote(endpoint.userid, safe='')}:{quote(endpoint.password, safe='')}"
    return f"{scheme}://{credentials}@{host}:{port}/"


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


@dataclass(frozen=True, slots=True)
class QueueDepths:
    """A taskwarren task queue of the vhost, as the management API lists it.

    Attributes:
        queue: the queue's name.
        ready: messages waiting to be delivered.
        unacked: delivered and not yet acked.
        consumers: consumers attached.
        dead: messages in its dead-letter queue (``None``: that queue does not exist).
    """

    queue: str
    ready: int
    unacked: int
    consumers: int
    dead: int | None


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

    def task_queues(self) -> list[QueueDepths]:
        """Every taskwarren queue of the vhost, by name: the queues that dead-letter to
        ``taskwarren.dlx`` under their own name (task queues and the job stores' event
        queues); their ``.dead`` queues, the delay levels and other applications' queues
        are left out.

        Raises:
            ManagementError: no answer within the timeout, an HTTP error, or an answer
                that is not a list of queues.
        """
        found = self._get(f"/api/queues/{quote(self.vhost, safe='')}?columns={LIST_COLUMNS}",
                          MAX_LIST_BYTES)
        if not isinstance(found, list) or not all(isinstance(q, dict) for q in found):
            raise ManagementError(f"management API at {self.location}: not a queue list")
        by_name = {q.get("name"): q for q in found}
        rows = []
        for name, queue in sorted(by_name.items(), key=lambda item: str(item[0])):
            arguments = queue.get("arguments")
            if not isinstance(name, str) or not isinstance(arguments, dict) \
                    or arguments.get("x-dead-letter-exchange") != DEAD_LETTER_EXCHANGE \
                    or arguments.get("x-dead-letter-routing-key") != name \
                    or name.endswith(DEAD_SUFFIX):
                continue
            dead = by_name.get(dead_queue(name))
            rows.append(QueueDepths(
                queue=name, ready=_count(queue, "messages_ready"),
                unacked=_count(queue, "messages_unacknowledged"),
                consumers=_count(queue, "consumers"),
                dead=None if dead is None else _count(dead, "messages")))
        return rows

    def amqp_ports(self) -> set[int]:
        """The ports the cluster's nodes listen on for AMQP (and AMQP over TLS).

        Raises:
            ManagementError: no answer, an HTTP error, or not the overview's JSON.
        """
        found = self._get("/api/overview?columns=listeners", MAX_ANSWER_BYTES)
        listeners = found.get("listeners") if isinstance(found, dict) else None
        if not isinstance(listeners, list):
            raise ManagementError(f"management API at {self.location}: not an overview")
        return {item["port"] for item in listeners
                if isinstance(item, dict) and item.get("protocol") in ("amqp", "amqp/ssl")
                and isinstance(item.get("port"), int)}

    def _queue(self, name: str) -> dict[str, Any]:
        found = self._get(f"/api/queues/{quote(self.vhost, safe='')}/{quote(name, safe='')}",
                          MAX_ANSWER_BYTES)
        if not isinstance(found, dict):
            raise ManagementError(f"management API at {self.location}: not a queue")
        return found

    def _get(self, path: str, max_bytes: int) -> Any:
        url = f"{self._base}{path}"
        request = urllib.request.Request(url, headers={"Authorization": self._auth,
                                                       "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                body = answer.read(max_bytes + 1)
        except urllib.error.HTTPError as exc:
            exc.close()
            raise ManagementError(f"management API at {self.location}: HTTP {exc.code}") \
                from None
        except (OSError, ValueError) as exc:  # URLError, timeouts, refused, bad URL
            reason = getattr(exc, "reason", None) or exc
            raise ManagementError(f"management API at {self.location}: "
                                  f"{type(reason).__name__}") from None
        if len(body) > max_bytes:
            raise ManagementError(f"management API at {self.location}: answer too large")
        try:
            return json.loads(body)
        except ValueError:
            raise ManagementError(f"management API at {self.location}: not JSON") from None


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

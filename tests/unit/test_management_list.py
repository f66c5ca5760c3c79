"""Which queues of the management API's list are taskwarren's, and which node it serves."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from taskwarren.management import ManagementAPI, ManagementError, management_url_for
from taskwarren.urls import parse_urls


def task_queue(name: str, ready: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "messages_ready": ready, "messages_unacknowledged": 1,
            "consumers": 2, "messages": ready + 1,
            "arguments": {"x-dead-letter-exchange": "taskwarren.dlx",
                          "x-dead-letter-routing-key": name, **extra}}


ANSWERS: dict[str, Any] = {
    "/api/queues/%2F?columns=name,arguments,messages_ready,messages_unacknowledged,"
    "consumers,messages": [
        task_queue("orders", 7),
        {"name": "orders.dead", "messages": 3, "arguments": {"x-queue-type": "quorum"}},
        task_queue("no-dead-queue", 0),
        # A delay level dead-letters to the next level, not to taskwarren.dlx.
        {"name": "taskwarren.delay.3", "messages": 9, "messages_ready": 9,
         "arguments": {"x-dead-letter-exchange": "taskwarren.delay.2"}},
        # Another application's queue, and one whose routing key is not its own name.
        {"name": "celery", "messages_ready": 5, "arguments": {}},
        task_queue("borrowed", 1, **{"x-dead-letter-routing-key": "orders"}),
    ],
    "/api/overview?columns=listeners": {"listeners": [
        {"protocol": "amqp", "port": 5672}, {"protocol": "http", "port": 15672},
        {"protocol": "clustering", "port": 25672}]},
}


class Fake(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        found = ANSWERS.get(self.path)
        self.send_response(200 if found is not None else 404)
        body = json.dumps(found).encode()
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def api() -> Iterator[ManagementAPI]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield ManagementAPI(f"http://ops:pw@127.0.0.1:{server.server_address[1]}/", "/")
    server.shutdown()
    server.server_close()


def test_only_queues_that_dead_letter_to_taskwarren_under_their_own_name_are_listed(
    api: ManagementAPI
) -> None:
    rows = api.task_queues()

    assert [(r.queue, r.ready, r.unacked, r.consumers, r.dead) for r in rows] == [
        ("no-dead-queue", 0, 1, 2, None), ("orders", 7, 1, 2, 3)]


def test_the_amqp_ports_of_the_node_are_read_from_the_overview(api: ManagementAPI) -> None:
    assert api.amqp_ports() == {5672}


def test_an_answer_that_is_no_list_is_an_error_naming_the_masked_url() -> None:
    with pytest.raises(ManagementError, match=r"http://ops:\*\*\*@127.0.0.1:1/"):
        ManagementAPI("http://ops:pw@127.0.0.1:1/", "/").task_queues()


@pytest.mark.parametrize(("url", "expected"), [
    ("amqp://guest:guest@rabbit/", "http://guest:guest@rabbit:15672/"),
    ("amqps://app:p%40ss@rabbit:5671/prod", "https://app:p%40ss@rabbit:15671/"),
    ("amqp://u:p@[::1]:5672/", "http://u:p@[::1]:15672/"),
])
def test_the_guessed_management_url_is_the_plugins_port_on_the_brokers_host(
    url: str, expected: str
) -> None:
    assert management_url_for(parse_urls(url)[0]) == expected

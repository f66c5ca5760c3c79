"""Queue figures from the RabbitMQ management API when configured (rates included), from
AMQP otherwise or when it fails, and the page says which; its password never shows."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from starlette.testclient import TestClient

from taskwarren import Warren
from taskwarren.management import ManagementAPI, ManagementError
from taskwarren.web import app as web_app
from tests.support.rabbit import delete_queues, unique_queue

PASSWORD = "mgmt-pass-never-shown"
QUEUES: dict[str, dict[str, Any]] = {
    "/api/queues/tw%2Fvhost/orders": {
        "messages_ready": 12, "messages_unacknowledged": 3, "consumers": 2,
        "message_stats": {"publish_details": {"rate": 4.5},
                          "deliver_get_details": {"rate": 4.25}}},
    "/api/queues/tw%2Fvhost/orders.dead": {"messages": 5},
    "/api/queues/tw%2Fvhost/idle": {"messages_ready": 0, "messages_unacknowledged": 0,
                                    "consumers": 1},
}


class FakeManagement(BaseHTTPRequestHandler):
    """Answers what :data:`QUEUES` holds, to requests with the right password."""

    def do_GET(self) -> None:
        expected = "Basic " + base64.b64encode(f"ops:{PASSWORD}".encode()).decode()
        found = QUEUES.get(self.path)
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            found = None
        elif found is None:
            self.send_response(404)
        else:
            self.send_response(200)
        body = json.dumps(found or {"error": "not found"}).encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def management() -> Iterator[str]:
    """The URL of a fake management API, password in it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeManagement)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://ops:{PASSWORD}@127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def amqp_app() -> Warren:
    """An app on a RabbitMQ URL that nothing answers (port 1): only the management API
    can tell anything."""
    return Warren(url="amqp://guest:guest@127.0.0.1:1/tw%2Fvhost", connect_timeout_s=0.5)


def test_the_management_api_gives_depth_unacked_consumers_dead_and_rates(
        management: str) -> None:
    stats = ManagementAPI(management, "tw/vhost").stats("orders")

    assert (stats.ready, stats.unacked, stats.consumers, stats.dead) == (12, 3, 2, 5)
    assert (stats.publish_rate, stats.deliver_rate, stats.ack_rate) == (4.5, 4.25, 0.0)


def test_a_queue_without_dead_letter_queue_has_no_dead_count(management: str) -> None:
    assert ManagementAPI(management, "tw/vhost").stats("idle").dead is None


def test_management_errors_name_the_masked_url_and_never_the_password(
        management: str) -> None:
    wrong = management.replace(PASSWORD, "wrong-password")
    with pytest.raises(ManagementError) as refused:
        ManagementAPI(wrong, "tw/vhost").stats("orders")
    with pytest.raises(ManagementError) as missing:
        ManagementAPI(management, "tw/vhost").stats("nope")
    with pytest.raises(ManagementError) as down:
        ManagementAPI(f"http://ops:{PASSWORD}@127.0.0.1:1/", "tw/vhost", 0.5).stats("orders")

    assert "HTTP 401" in str(refused.value) and "HTTP 404" in str(missing.value)
    assert "ConnectionRefusedError" in str(down.value)
    for error in (refused.value, missing.value, down.value):
        assert PASSWORD not in str(error) and "wrong-password" not in str(error)
        assert "ops:***@127.0.0.1" in str(error)


def test_the_queue_page_says_its_figures_come_from_the_management_api(
        management: str) -> None:
    app = amqp_app()
    client = TestClient(web_app(app, management_url=management, queues=["orders"],
                                read_timeout_s=0.5, listen_s=0.1))

    page = client.get("/queues/orders").text
    overview = client.get("/api/overview").json()

    assert 'data-testid="source" data-source="management"' in page
    assert "RabbitMQ management API" in page
    assert 'data-testid="stat-unacked">3<' in page
    assert 'data-testid="rate-publish">4.5/s<' in page
    assert 'data-testid="rate-ack">0.0/s<' in page
    (orders,) = overview["queues"]
    assert orders["source"] == "management" and orders["rates"]["deliver"] == 4.25
    assert PASSWORD not in page and PASSWORD not in json.dumps(overview)


def test_when_the_management_api_fails_the_page_falls_back_to_amqp_and_says_so() -> None:
    app = amqp_app()
    down = f"http://ops:{PASSWORD}@127.0.0.1:1/"
    client = TestClient(web_app(app, management_url=down, queues=["orders"],
                                read_timeout_s=0.5))

    page = client.get("/queues/orders").text

    assert 'data-testid="source" data-source="amqp"' in page
    assert 'data-testid="source-note"' in page
    assert "the management API failed" in page and "come from AMQP" in page
    assert PASSWORD not in page


@pytest.mark.rabbitmq
def test_without_the_management_api_figures_come_from_amqp_and_rates_are_dashes(
        rabbit_url: str) -> None:
    queue = unique_queue()
    app = Warren(url=rabbit_url)
    try:
        app.declare([queue])
        with TestClient(web_app(app, queues=[queue])) as client:  # closes its connection
            page = client.get(f"/queues/{queue}").text
            data = client.get(f"/api/queues/{queue}").json()
    finally:
        app.close()
        delete_queues(queue, url=rabbit_url)

    assert 'data-testid="source" data-source="amqp"' in page
    assert 'data-testid="stat-ready">0<' in page
    assert 'data-testid="stat-unacked">-<' in page  # AMQP cannot tell
    assert 'data-testid="rate-publish">-<' in page
    assert data["queue"]["consumers"] == 0 and data["queue"]["unacked"] is None
    assert data["dead_letters"] == []

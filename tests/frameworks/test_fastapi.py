"""The ASGI lifespan on real FastAPI, driven by its TestClient: the example's endpoint
sends a task and the task runs; on RabbitMQ, the queue is there before the first request
and the connection is closed when the app stops."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from examples import fastapi_app
from taskwarren import Warren
from taskwarren.brokers.rabbitmq import RabbitMQBroker
from taskwarren.contrib.asgi import lifespan
from taskwarren.testing import in_memory
from taskwarren.worker.execute import Executor


def test_the_examples_signup_sends_a_welcome_task_that_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fastapi_app, "MAILED", [])
    warren = fastapi_app.warren
    with in_memory(warren) as queues, TestClient(fastapi_app.api) as client:
        assert queues.waiting("examples.welcome") == 0  # declared at startup
        accepted = client.post("/signups", json={"email": "ada@example.com"})
        refused = client.post("/signups", json={"email": "not an address"})
        assert queues.waiting("examples.welcome") == 1
        [result] = queues.run()

    assert accepted.status_code == 202
    assert accepted.json()["task_id"]
    assert refused.status_code == 422
    assert result.outcome == "succeeded"
    assert fastapi_app.MAILED == ["ada@example.com"]


def test_the_lifespan_closes_the_connection_when_the_app_stops() -> None:
    warren = Warren("memory://")
    with TestClient(FastAPI(lifespan=lifespan(warren))):
        opened = warren.broker
        assert warren._broker is opened  # connected at startup
    assert warren._broker is None


@pytest.mark.rabbitmq
def test_on_rabbitmq_the_queue_exists_before_the_first_request_and_the_sent_task_runs(
    rabbit_url: str, queue: str
) -> None:
    warren = Warren(rabbit_url)
    ran: list[int] = []

    @warren.task(queue=queue)
    def ship(order_id: int) -> None:
        ran.append(order_id)

    api = FastAPI(lifespan=lifespan(warren))

    @api.post("/orders/{order_id}/ship", status_code=202)
    def ship_order(order_id: int) -> dict[str, str]:
        return {"task_id": ship.send(order_id)}

    observer = Warren(rabbit_url)
    try:
        with TestClient(api) as client:
            assert isinstance(warren.broker, RabbitMQBroker)
            assert observer.broker.stats(queue).ready == 0  # declared before any request
            assert client.post("/orders/42/ship").status_code == 202
        assert warren._broker is None  # closed at shutdown

        consumer = observer.broker.consumer()
        consumer.consume(queue, 10)
        executor = Executor(warren.tasks, warren.settings.max_message_bytes, warren.middleware)
        try:
            [delivery] = consumer.poll(10.0)
            result = executor.run(delivery)
            consumer.settle(delivery, result.action)
        finally:
            consumer.close()
        assert result.outcome == "succeeded"
        assert ran == [42]
        assert observer.broker.stats(queue).ready == 0
    finally:
        observer.close()

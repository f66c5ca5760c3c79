"""The testing helpers: an existing app switched to memory and back, its sends run as a
worker runs them, and ``task.run_now`` giving the function what a worker would."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel

from taskwarren import Backoff, Warren
from taskwarren.brokers.memory import MemoryBroker
from taskwarren.errors import ArgumentsError, PublishError
from taskwarren.message import H_ERROR_TYPE
from taskwarren.testing import in_memory


@pytest.fixture
def app() -> Warren:
    """An app with a broker of its own (which must never see the tests' messages)."""
    return Warren("memory://", broker=MemoryBroker())


def test_an_existing_apps_tasks_send_to_memory_while_switched_and_to_its_own_broker_after(
    app: Warren,
) -> None:
    own = app.broker

    @app.task(queue="tt.a")
    def add(x: int, y: int) -> int:
        return x + y

    with in_memory(app) as queues:
        add.send(1, 2)
        assert app.broker is queues.broker
        assert queues.waiting("tt.a") == 1
        [result] = queues.run()
        assert result.outcome == "succeeded"
    assert app.broker is own
    assert own.stats("tt.a").ready == 0
    add.send(3, 4)
    assert own.stats("tt.a").ready == 1


def test_an_app_not_yet_connected_connects_anew_after_the_switch() -> None:
    app = Warren("memory://")
    with in_memory(app) as queues:
        memory = queues.broker
    assert app.broker is not memory


# Port 1: nothing listens; a send that escaped memory would fail, not reach a broker.
UNREACHABLE = "amqp://guest:guest@127.0.0.1:1/"


def test_sends_stay_in_memory_after_the_asgi_lifespan_closed_the_app() -> None:
    app = Warren(UNREACHABLE)

    @app.task(queue="tt.lifespan")
    def welcome(x: int) -> None:
        pass

    with in_memory(app) as queues:
        app.close()  # what taskwarren.contrib.asgi.connected does when a TestClient exits
        welcome.send(1)  # a later request, or the test's own send
        assert queues.waiting("tt.lifespan") == 1
        assert [r.outcome for r in queues.run()] == ["succeeded"]


def test_retries_run_at_once_however_long_their_backoff_and_the_call_succeeds(
    app: Warren,
) -> None:
    tries: list[int] = []

    @app.task(queue="tt.flaky", retries=3, backoff=Backoff(base_s=600, min_s=600))
    def flaky() -> None:
        tries.append(1)
        if len(tries) < 3:
            raise RuntimeError("not yet")

    with in_memory(app) as queues:
        flaky.send()
        started = time.monotonic()
        results = queues.run()
        took = time.monotonic() - started

    assert [r.outcome for r in results] == ["retried", "retried", "succeeded"]
    assert took < 5  # not the ten minutes' backoff, twice


def test_a_failure_that_ends_in_the_dead_letter_queue_is_re_raised_after_the_rest_ran(
    app: Warren,
) -> None:
    ran: list[int] = []

    @app.task(queue="tt.bad", retries=1)
    def bad(n: int) -> None:
        ran.append(n)
        if n == 0:
            raise ValueError("zero")

    with in_memory(app) as queues:
        bad.send(0)
        bad.send(1)
        with pytest.raises(ValueError, match="zero"):
            queues.run()
        [dead] = queues.dead_letters("tt.bad")

    assert sorted(ran) == [0, 0, 1]  # tried twice, and the other call ran too
    assert dead.attempt == 1
    assert dead.headers[H_ERROR_TYPE].endswith("ValueError")


def test_a_delayed_send_runs_at_once(app: Warren) -> None:
    @app.task(queue="tt.later")
    def later() -> str:
        return "done"

    with in_memory(app) as queues:
        later.options(delay=3600).send()
        assert queues.waiting("tt.later") == 1
        [result] = queues.run()
        assert result.outcome == "succeeded"
        assert queues.waiting("tt.later") == 0


def test_a_task_that_keeps_sending_itself_stops_the_run_with_a_clear_error(
    app: Warren,
) -> None:
    @app.task(queue="tt.loop")
    def loop() -> None:
        loop.send()

    with in_memory(app) as queues:
        loop.send()
        with pytest.raises(RuntimeError, match="after 50 messages"):
            queues.run(max_messages=50)


class Order(BaseModel):
    """An argument model."""

    sku: str
    quantity: int


def test_run_now_gives_the_function_the_arguments_a_worker_decodes(app: Warren) -> None:
    seen: list[object] = []

    @app.task
    def place(order: Order, at: datetime, tags: list[str]) -> str:
        seen.extend([order, at, tags])
        return f"{order.quantity} x {order.sku}"

    result = place.run_now({"sku": "A-1", "quantity": "3"},  # type: ignore[arg-type]
                           "2026-01-02T03:04:05Z", ("x", "y"))  # type: ignore[arg-type]

    assert result == "3 x A-1"
    assert seen == [Order(sku="A-1", quantity=3), datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
                    ["x", "y"]]
    seen.clear()
    with pytest.raises(AttributeError):  # a plain call decodes nothing: the dict stays one
        place({"sku": "A-1", "quantity": "3"}, "2026-01-02T03:04:05Z",  # type: ignore[arg-type]
              ("x", "y"))  # type: ignore[arg-type]
    assert seen == [{"sku": "A-1", "quantity": "3"}, "2026-01-02T03:04:05Z", ("x", "y")]


def test_run_now_refuses_what_send_refuses_without_running_the_function(app: Warren) -> None:
    ran: list[int] = []

    @app.task
    def count(n: int) -> None:
        ran.append(n)

    with pytest.raises(ArgumentsError, match="n"):
        count.run_now("many")  # type: ignore[arg-type]
    small = Warren("memory://", broker=MemoryBroker(), max_message_bytes=1024)
    big = small.task(name="big")(lambda text: None)
    with pytest.raises(PublishError, match="exceeds max_message_bytes"):
        big.run_now("x" * 2000)
    assert ran == []


def test_run_now_lets_the_functions_exception_through(app: Warren) -> None:
    @app.task(retries=5)
    def fails() -> None:
        raise KeyError("nope")

    with pytest.raises(KeyError, match="nope"):
        fails.run_now()

"""@task and .send(): validation, options, and what lands in the queue."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel

from taskwarren import Retry, Warren
from taskwarren.errors import ArgumentsError, ConfigurationError, PublishError
from taskwarren.testing import join


@pytest.fixture
def app() -> Warren:
    return Warren(url="memory://")


def test_bare_and_keyword_decorators_register_tasks(app: Warren) -> None:
    @app.task
    def plain(x: int) -> int:
        return x

    @app.task(queue="analysis", name="custom.name")
    def named(x: int) -> int:
        return x

    assert plain.queue == "default"
    assert named.queue == "analysis"
    assert set(app.tasks) == {f"{__name__}.test_bare_and_keyword_decorators_register_tasks."
                              "<locals>.plain", "custom.name"}
    assert plain(3) == 3, "calling the task runs the function here"


def test_send_validates_and_names_the_bad_field(app: Warren) -> None:
    @app.task(queue="analysis")
    def analyse(message_id: int, folder: str = "inbox") -> None: ...

    with pytest.raises(ArgumentsError) as err:
        analyse.send("forty-two")  # type: ignore[arg-type]
    assert err.value.fields == ["message_id"]
    with pytest.raises(ArgumentsError) as err:
        analyse.send(1, colour="red")  # type: ignore[call-arg]
    assert "colour" in str(err.value)
    with pytest.raises(ArgumentsError):
        analyse.send()  # type: ignore[call-arg]
    assert app.broker.stats("analysis").ready == 0, "nothing was published"


def test_send_returns_the_task_id_of_a_json_message(app: Warren) -> None:
    @app.task(queue="analysis")
    def analyse(message_id: int, folder: str = "inbox") -> None: ...

    task_id = analyse.send(42, folder="spam")
    consumer = app.broker.consumer()
    consumer.consume("analysis", 10)
    (delivery,) = consumer.poll(0)
    assert delivery.envelope.message_id == task_id
    assert json.loads(delivery.envelope.body) == {"message_id": 42, "folder": "spam"}
    assert delivery.envelope.headers["tw-task"] == analyse.name
    assert delivery.envelope.headers["tw-attempt"] == 0


class Event(BaseModel):
    kind: str
    amount: float


def test_pydantic_models_travel_as_json_and_arrive_as_models(app: Warren) -> None:
    seen: list[Event] = []

    @app.task
    def handle(event: Event) -> None:
        seen.append(event)

    handle.send(Event(kind="audit", amount=1.5))
    handle.send({"kind": "audit", "amount": "2"})  # type: ignore[arg-type]
    join(app)
    assert seen == [Event(kind="audit", amount=1.5), Event(kind="audit", amount=2.0)]


def test_send_many_validates_everything_before_publishing_anything(app: Warren) -> None:
    @app.task(queue="bulk")
    def item(n: int) -> None: ...

    ids = item.send_many([{"n": i} for i in range(100)])
    assert len(set(ids)) == 100
    with pytest.raises(ArgumentsError):
        item.send_many([{"n": 1}, {"n": "x"}])
    assert app.broker.stats("bulk").ready == 100


def test_options_route_to_another_queue_and_delay(app: Warren) -> None:
    @app.task(queue="analysis")
    def analyse(message_id: int) -> None: ...

    analyse.options(queue="urgent").send(1)
    analyse.options(delay=timedelta(seconds=60)).send(2)
    analyse.options(eta=datetime.now(UTC) + timedelta(hours=1)).send(3)
    assert app.broker.stats("urgent").ready == 1
    stats = app.broker.stats("analysis")
    assert (stats.ready, stats.delayed) == (0, 2)
    with pytest.raises(ConfigurationError, match="aware"):
        analyse.options(eta=datetime.now())
    with pytest.raises(ConfigurationError, match="queue name"):
        analyse.options(queue="bad#name")


def test_an_oversized_call_fails_at_send(app: Warren) -> None:
    @app.task
    def big(blob: str) -> None: ...

    with pytest.raises(PublishError, match="exceeds max_message_bytes"):
        big.send("x" * (2 * 1024 * 1024))


def test_star_args_cannot_be_validated_and_are_refused_at_decoration(app: Warren) -> None:
    with pytest.raises(ConfigurationError, match=r"\*args"):
        @app.task
        def loose(*args: int) -> None: ...


def test_join_reraises_a_dead_lettered_failure_and_keeps_the_dead_letter(app: Warren) -> None:
    @app.task(queue="q")
    def fails(n: int) -> None:
        raise RuntimeError(f"no {n}")

    fails.send(1)
    with pytest.raises(RuntimeError, match="no 1"):
        join(app)
    (dead,) = app.broker.dead_letters("q")
    assert dead.headers["tw-error-type"] == "RuntimeError"


def test_retries_run_again_through_the_delay_path_then_succeed(app: Warren) -> None:
    attempts: list[int] = []

    @app.task(queue="q", retries=3)
    def flaky(n: int) -> None:
        attempts.append(n)
        if len(attempts) < 3:
            raise Retry(delay=0.01)

    flaky.send(5)
    results = join(app)
    assert [r.outcome for r in results] == ["retried", "retried", "succeeded"]
    assert attempts == [5, 5, 5]
    assert app.broker.dead_letters("q") == []


def test_dont_retry_exceptions_are_dead_lettered_at_once(app: Warren) -> None:
    class Fatal(Exception):
        pass

    @app.task(queue="q", retries=5, dont_retry=[Fatal])
    def broken(n: int) -> None:
        raise Fatal("unreadable")

    broken.send(1)
    results = join(app, fail_on_error=False)
    assert [r.outcome for r in results] == ["dead_lettered"]
    assert app.broker.dead_letters("q")[0].headers["tw-reason"] == "not retried"


def test_a_time_limit_beyond_the_broker_consumer_timeout_asks_for_a_longer_one() -> None:
    from taskwarren.worker.process import consumer_timeout_s

    app = Warren(url="memory://", consumer_timeout_s=1800)

    @app.task(time_limit=60)
    def short() -> None: ...

    assert consumer_timeout_s(app) is None, "the broker's default is long enough"

    @app.task(time_limit=7200)
    def long_running() -> None: ...

    assert consumer_timeout_s(app) == 7260.0


def test_async_functions_register_as_async_tasks_and_async_generators_are_refused(
    app: Warren,
) -> None:
    async def fetch(n: int) -> int:
        return n

    async def pages(n: int) -> AsyncIterator[int]:
        yield n

    def plain(n: int) -> int:
        return n

    assert app.task(name="fetch")(fetch).is_async
    assert not app.task(name="plain")(plain).is_async
    with pytest.raises(ConfigurationError, match="async generator"):
        app.task(name="pages")(pages)
    assert "pages" not in app.tasks

"""Events and broadcasts on the in-memory broker: topic matching, subscribers, failures."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from taskwarren import Warren
from taskwarren.errors import ArgumentsError, ConfigurationError, UnroutableError
from taskwarren.message import H_ERROR_TYPE, H_EVENT, H_TASK, encode
from taskwarren.testing import join
from taskwarren.topology import BROADCAST_EXCHANGE, patterns_overlap, topic_matches
from taskwarren.worker.execute import Executor


class AuditEvent(BaseModel):
    who: str
    amount: int


class Other(BaseModel):
    colour: str


@pytest.fixture
def app() -> Warren:
    return Warren(url="memory://")


@pytest.mark.parametrize(("pattern", "key", "matches"), [
    ("audit", "audit", True),
    ("audit", "audit.irs", False),
    ("audit.*", "audit.irs", True),
    ("audit.*", "audit", False),
    ("audit.*", "audit.irs.corporate", False),
    ("audit.#", "audit", True),
    ("audit.#", "audit.irs", True),
    ("audit.#", "audit.irs.corporate", True),
    ("audit.#", "auditing.irs", False),
    ("#", "anything.at.all", True),
    ("#", "x", True),
    ("*", "x", True),
    ("*", "x.y", False),
    ("*.irs.*", "audit.irs.corporate", True),
    ("*.irs.*", "audit.irs", False),
    ("#.corporate", "corporate", True),
    ("#.corporate", "audit.irs.corporate", True),
    ("#.corporate", "audit.corporate.x", False),
    ("audit.#.corporate", "audit.corporate", True),
    ("audit.#.corporate", "audit.a.b.corporate", True),
    ("audit.*.#", "audit", False),
    ("audit.*.#", "audit.irs", True),
    ("email.flagged", "email.flagged", True),
    ("email.flagged", "email.flagged.x", False),
])
def test_topic_patterns_match_as_rabbitmq_defines_them(
    pattern: str, key: str, matches: bool
) -> None:
    assert topic_matches(pattern, key) is matches


@pytest.mark.parametrize(("a", "b", "overlap"), [
    ("audit.#", "audit.irs.*", True),
    ("audit.*", "email.*", False),
    ("#", "email.flagged", True),
    ("*.x", "y.*", True),
    ("a.*", "a.#.b.c", False),
    ("a.#", "#.b", True),
])
def test_two_patterns_overlap_when_some_key_matches_both(a: str, b: str, overlap: bool) -> None:
    assert patterns_overlap(a, b) is overlap
    assert patterns_overlap(b, a) is overlap


def test_each_subscribed_queue_gets_its_own_copy_and_runs_its_own_task(app: Warren) -> None:
    logged: list[AuditEvent] = []
    alerted: list[AuditEvent] = []

    @app.task(queue="log-forever", subscribe=["audit.#"])
    def log_forever(event: AuditEvent) -> None:
        logged.append(event)

    @app.task(queue="alerts", subscribe=["audit.irs.*", "email.flagged"])
    def alert(event: AuditEvent) -> None:
        alerted.append(event)

    app.bind_subscriptions()
    assert app.publish_event("audit.irs.corporate", AuditEvent(who="a", amount=1)) == 2
    assert app.publish_event("audit.local", AuditEvent(who="b", amount=2)) == 1
    results = join(app)

    assert logged == [AuditEvent(who="a", amount=1), AuditEvent(who="b", amount=2)]
    assert alerted == [AuditEvent(who="a", amount=1)]
    assert sorted(r.task for r in results) == sorted([log_forever.name] * 2 + [alert.name])


def test_an_event_nobody_subscribes_to_is_reported_and_can_be_required(app: Warren) -> None:
    assert app.publish_event("nobody.listens", AuditEvent(who="a", amount=1)) == 0
    with pytest.raises(UnroutableError, match=r"nobody\.listens"):
        app.publish_event("nobody.listens", AuditEvent(who="a", amount=1),
                          require_subscriber=True)


def test_a_payload_is_validated_at_publish_against_its_model_or_a_local_subscriber(
    app: Warren,
) -> None:
    @app.task(queue="log", subscribe=["audit.#"])
    def log_it(event: AuditEvent) -> None: ...

    app.bind_subscriptions()
    broken = AuditEvent.model_construct(who="a", amount="lots")
    with pytest.raises(ArgumentsError, match="amount"):
        app.publish_event("audit.x", broken)
    with pytest.raises(ArgumentsError, match="amount"):
        app.publish_event("audit.x", {"who": "a", "amount": "lots"})
    assert app.publish_event("audit.x", {"who": "a", "amount": "3"}) == 1
    with pytest.raises(ArgumentsError, match="pydantic model"):
        app.publish_event("unknown.x", {"who": "a"})
    with pytest.raises(ConfigurationError, match="routing key"):
        app.publish_event("audit.#", AuditEvent(who="a", amount=1))
    (delivery,) = _deliveries(app, "log")
    assert json.loads(delivery.envelope.body) == {"who": "a", "amount": 3}
    assert delivery.envelope.headers[H_EVENT] == "audit.x"


def _deliveries(app: Warren, queue: str) -> list:  # type: ignore[type-arg]
    consumer = app.broker.consumer()
    consumer.consume(queue, 100)
    return consumer.poll(0)


def test_a_copy_that_does_not_fit_a_subscriber_goes_to_that_subscribers_dead_letters(
    app: Warren,
) -> None:
    seen: list[AuditEvent] = []

    @app.task(queue="audits", subscribe=["thing.#"])
    def audits(event: AuditEvent) -> None:
        seen.append(event)

    @app.task(queue="colours", subscribe=["thing.*"])
    def colours(event: Other) -> None: ...

    app.bind_subscriptions()
    assert app.publish_event("thing.one", AuditEvent(who="a", amount=1)) == 2
    results = join(app, fail_on_error=False)

    assert seen == [AuditEvent(who="a", amount=1)]
    assert sorted(r.outcome for r in results) == ["rejected", "succeeded"]
    (dead,) = app.broker.dead_letters("colours")
    assert dead.headers[H_TASK] == colours.name
    assert dead.headers[H_ERROR_TYPE] == "ArgumentsError"
    assert "colour" in str(dead.headers["tw-reason"])
    assert app.broker.dead_letters("audits") == []


def test_a_failing_subscriber_retries_its_own_copy_only_and_never_fans_out_again(
    app: Warren,
) -> None:
    calls = {"flaky": 0, "steady": 0}

    @app.task(queue="flaky", subscribe=["order.placed"], retries=2)
    def flaky(event: AuditEvent) -> None:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise RuntimeError("not yet")

    @app.task(queue="steady", subscribe=["order.*"])
    def steady(event: AuditEvent) -> None:
        calls["steady"] += 1

    app.bind_subscriptions()
    app.publish_event("order.placed", AuditEvent(who="a", amount=1))
    results = join(app, fail_on_error=False)

    assert calls == {"flaky": 3, "steady": 1}
    assert [r.outcome for r in results if r.task == flaky.name] == [
        "retried", "retried", "succeeded"]


def test_an_event_that_dead_letters_names_its_subscriber_and_replays_to_it(app: Warren) -> None:
    runs: list[int] = []

    @app.task(queue="fails", subscribe=["x.y"])
    def fails(event: AuditEvent) -> None:
        runs.append(event.amount)
        if len(runs) == 1:
            raise ValueError("first time fails")

    app.bind_subscriptions()
    app.publish_event("x.y", AuditEvent(who="a", amount=7))
    join(app, fail_on_error=False)
    (dead,) = app.broker.dead_letters("fails")
    assert dead.headers[H_TASK] == fails.name
    assert app.broker.replay_dead("fails", None) == 1
    join(app)
    assert runs == [7, 7]


def test_two_subscribers_of_one_event_cannot_share_a_queue(app: Warren) -> None:
    @app.task(queue="shared", subscribe=["audit.#"])
    def first(event: AuditEvent) -> None: ...

    with pytest.raises(ConfigurationError, match="own queue"):
        @app.task(queue="shared", subscribe=["audit.irs"])
        def second(event: AuditEvent) -> None: ...

    @app.task(queue="shared", subscribe=["email.*"])
    def third(event: AuditEvent) -> None: ...


def test_a_subscriber_takes_the_event_as_its_first_argument(app: Warren) -> None:
    with pytest.raises(ConfigurationError, match="first argument"):
        @app.task(queue="q", subscribe=["a"])
        def two(event: AuditEvent, other: int) -> None: ...

    with pytest.raises(ConfigurationError, match="subscription"):
        @app.task(queue="q", subscribe=["a.b*"])
        def bad(event: AuditEvent) -> None: ...


def test_a_broadcast_reaches_every_listening_consumer_once_and_not_a_late_one(
    app: Warren,
) -> None:
    ran: list[int] = []

    @app.task(broadcast=True)
    def reload_rules(version: int) -> None:
        ran.append(version)

    broker = app.broker
    first, second = broker.consumer(), broker.consumer()
    first.consume_broadcast(1)
    second.consume_broadcast(1)
    reload_rules.send(7)
    late = broker.consumer()
    late.consume_broadcast(1)
    executor = Executor(app.tasks, app.settings.max_message_bytes)
    for consumer in (first, second):
        (delivery,) = consumer.poll(0)
        assert delivery.queue == BROADCAST_EXCHANGE
        consumer.settle(delivery, executor.run(delivery).action)
        assert consumer.poll(0) == []
    assert late.poll(0) == []
    assert ran == [7, 7]
    for consumer in (first, second, late):
        consumer.close()
    reload_rules.send(8)  # nobody listens: sent, reaches no one, no error


def test_a_failing_broadcast_is_dead_lettered_to_its_tasks_queue(app: Warren) -> None:
    @app.task(queue="control", broadcast=True)
    def explode(version: int) -> None:
        raise RuntimeError("bad rules")

    consumer = app.broker.consumer()
    consumer.consume_broadcast(1)
    explode.send(1)
    (delivery,) = consumer.poll(0)
    consumer.settle(delivery, Executor(app.tasks, 1 << 20).run(delivery).action)
    (dead,) = app.broker.dead_letters("control")
    assert dead.headers[H_ERROR_TYPE] == "RuntimeError"
    consumer.close()


def test_broadcasts_refuse_retries_and_delays(app: Warren) -> None:
    with pytest.raises(ConfigurationError, match="retries"):
        @app.task(broadcast=True, retries=1)
        def retried(n: int) -> None: ...

    @app.task(broadcast=True)
    def once(n: int) -> None: ...

    with pytest.raises(ConfigurationError, match="delayed"):
        once.options(delay=5).send(1)


def test_a_plain_task_message_is_unaffected_by_subscriptions_on_its_queue(app: Warren) -> None:
    got: list[int] = []

    @app.task(queue="mixed", subscribe=["m.#"])
    def on_event(event: AuditEvent) -> None:
        got.append(-event.amount)

    @app.task(queue="mixed")
    def direct(n: int) -> None:
        got.append(n)

    app.bind_subscriptions()
    direct.send(5)
    on_event.send(AuditEvent(who="x", amount=6))  # a subscriber is still an ordinary task
    app.publish_event("m.x", AuditEvent(who="x", amount=7))
    join(app)
    assert sorted(got) == [-7, -6, 5]
    assert encode("t", "q", b"{}").headers.get(H_EVENT) is None

"""Middleware: the hooks a user's middleware sees, their order, failures, and owned options."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

import taskwarren
from taskwarren import Middleware, Retry, TaskRun, Warren
from taskwarren.errors import ConfigurationError
from taskwarren.message import H_REASON, Envelope
from taskwarren.middleware import CORE_OPTIONS, Chain, default_middleware
from taskwarren.middleware.retries import dead_letter
from taskwarren.options import TaskOptionArgs
from taskwarren.testing import join


class Recorder(Middleware):
    """Records every hook as a tuple."""

    def __init__(self, name: str = "rec", seen: list[tuple[Any, ...]] | None = None) -> None:
        self.name = name
        self.seen: list[tuple[Any, ...]] = [] if seen is None else seen

    def before_enqueue(self, envelope: Envelope) -> None:
        self.seen.append((self.name, "before_enqueue", envelope.task, envelope.message_id))

    def after_enqueue(self, envelope: Envelope) -> None:
        self.seen.append((self.name, "after_enqueue", envelope.task, envelope.message_id))

    def before_process(self, run: TaskRun) -> None:
        self.seen.append((self.name, "before_process", run.task_name, run.task_id,
                          run.attempt, run.queue))

    def after_process(self, run: TaskRun) -> None:
        self.seen.append((self.name, "after_process", run.task_name, run.task_id, run.attempt,
                          run.queue, run.outcome, run.exception, run.duration_s))


class Exploding(Middleware):
    """Raises in every hook."""

    def before_enqueue(self, envelope: Envelope) -> None:
        raise RuntimeError("before_enqueue broke")

    def after_enqueue(self, envelope: Envelope) -> None:
        raise RuntimeError("after_enqueue broke")

    def after_publish(self, queue: str, count: int, duration_s: float) -> None:
        raise RuntimeError("after_publish broke")

    def before_process(self, run: TaskRun) -> None:
        raise RuntimeError("before_process broke")

    def after_process(self, run: TaskRun) -> None:
        raise RuntimeError("after_process broke")

    def failure_action(self, run: TaskRun, delivery: Any, traceback: str) -> Any:
        raise RuntimeError("failure_action broke")


def test_a_user_middleware_sees_every_send_and_run_including_the_exception() -> None:
    recorder = Recorder()
    app = Warren(url="memory://", middleware=[recorder])

    @app.task(queue="q", name="ok")
    def ok(n: int) -> None: ...

    @app.task(queue="q", name="bad")
    def bad(n: int) -> None:
        raise ValueError(f"bad {n}")

    ok_id, bad_id = ok.send(1), bad.send(2)
    join(app, fail_on_error=False)

    hooks = [(s[1], s[3]) for s in recorder.seen]
    assert hooks == [("before_enqueue", ok_id), ("after_enqueue", ok_id),
                     ("before_enqueue", bad_id), ("after_enqueue", bad_id),
                     ("before_process", ok_id), ("after_process", ok_id),
                     ("before_process", bad_id), ("after_process", bad_id)]
    before_ok, after_ok = recorder.seen[4], recorder.seen[5]
    assert before_ok[2:] == ("ok", ok_id, 0, "q")
    assert after_ok[6:8] == ("succeeded", None) and after_ok[8] >= 0
    after_bad = recorder.seen[7]
    assert after_bad[2] == "bad" and after_bad[6] == "dead_lettered"
    assert isinstance(after_bad[7], ValueError) and str(after_bad[7]) == "bad 2"
    assert app.broker.stats("q").dead == 1


def test_outcomes_retried_and_rejected_reach_after_process() -> None:
    recorder = Recorder()
    app = Warren(url="memory://")
    app.add_middleware(recorder)

    @app.task(queue="q", name="again", retries=1)
    def again(n: int) -> None:
        raise Retry(delay=0)

    again.send(1)
    app.broker.publish("q", [taskwarren.message.encode("nobody", "q", b"{}")])
    join(app, fail_on_error=False)

    outcomes = [(s[2], s[4], s[6]) for s in recorder.seen if s[1] == "after_process"]
    assert sorted(outcomes) == [("again", 0, "retried"), ("again", 1, "dead_lettered"),
                                ("unknown", 0, "rejected")]


def test_after_hooks_run_in_reverse_order_of_registration() -> None:
    seen: list[tuple[Any, ...]] = []
    app = Warren(url="memory://", middleware=[Recorder("first", seen), Recorder("second", seen)])

    @app.task(queue="q", name="t")
    def t() -> None: ...

    t.send()
    join(app)
    assert [(s[0], s[1]) for s in seen] == [
        ("first", "before_enqueue"), ("second", "before_enqueue"),
        ("second", "after_enqueue"), ("first", "after_enqueue"),
        ("first", "before_process"), ("second", "before_process"),
        ("second", "after_process"), ("first", "after_process")]


def test_a_middleware_that_raises_is_logged_and_loses_no_message() -> None:
    recorder = Recorder()
    app = Warren(url="memory://", middleware=[Exploding(), recorder, Exploding()])
    ran: list[int] = []

    @app.task(queue="q", name="t", retries=1)
    def t(n: int) -> None:
        ran.append(n)
        if n == 2:
            raise ValueError("fails")

    t.send(1)
    t.send(2)
    join(app, fail_on_error=False)

    assert ran == [1, 2, 2], "both ran, and the failure was still retried once"
    stats = app.broker.stats("q")
    assert stats.ready == 0 and stats.dead == 1, "the failure kept, as a dead letter"
    assert [s[6] for s in recorder.seen if s[1] == "after_process"] == [
        "succeeded", "retried", "dead_lettered"], "the other middleware still ran"


def test_an_option_no_middleware_owns_is_refused_by_name() -> None:
    app = Warren(url="memory://")
    with pytest.raises(ConfigurationError, match="'bogus_option'"):
        app.task(bogus_option=1)(lambda: None)  # type: ignore[call-overload]
    taskwarren.app.set_default_app(app)
    try:
        with pytest.raises(ConfigurationError, match="unknown task option 'bogus_option'"):
            @taskwarren.task(bogus_option=1)  # type: ignore[call-overload]
            def f() -> None: ...
    finally:
        taskwarren.app.set_default_app(None)
    assert app.tasks == {}


def test_an_option_a_registered_middleware_owns_reaches_its_hooks() -> None:
    class Audit(Middleware):
        options: ClassVar[frozenset[str]] = frozenset({"audit_level"})
        levels: ClassVar[list[object]] = []

        def before_process(self, run: TaskRun) -> None:
            if run.task is not None:
                self.levels.append(run.task.task_options.extra.get("audit_level"))

    app = Warren(url="memory://", middleware=[Audit()])

    @app.task(queue="q", audit_level="high")  # type: ignore[call-overload]
    def t() -> None: ...

    t.send()
    join(app)
    assert Audit.levels == ["high"]


def test_every_option_task_takes_is_owned_by_the_core_or_a_default_middleware() -> None:
    owned = CORE_OPTIONS.union(*(m.options for m in default_middleware()))
    assert owned == set(TaskOptionArgs.__annotations__)


def test_something_that_is_no_middleware_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"not a taskwarren\.Middleware"):
        Warren(url="memory://", middleware=[object()])  # type: ignore[list-item]


def test_an_empty_chain_runs_every_hook_as_nothing() -> None:
    chain = Chain()
    run = TaskRun("t", "id", 0, "q")
    chain.before_process(run)
    chain.after_process(run)
    chain.child_started(0)
    chain.reconnected()
    chain.child_restarted()
    assert chain.failure_action(run, None, "") is None  # type: ignore[arg-type]
    assert not chain.uses("before_enqueue")


def test_an_applications_middleware_decides_a_failure_before_the_built_in_retries() -> None:
    class NeverRetry(Middleware):
        def failure_action(self, run: TaskRun, delivery: Any, traceback: str) -> Any:
            return dead_letter(delivery, "Refused", "no retries here", traceback,
                               "audit says no", run.task), "dead_lettered"

    app = Warren(url="memory://", middleware=[NeverRetry()])
    ran: list[int] = []

    @app.task(queue="q", name="t", retries=3)
    def t() -> None:
        ran.append(1)
        raise ValueError("fails")

    t.send()
    join(app, fail_on_error=False)
    assert ran == [1], "not retried"
    (dead,) = app.broker.dead_letters("q")
    assert dead.headers[H_REASON] == "audit says no"

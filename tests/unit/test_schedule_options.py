"""``@task(cron=..., every=...)``: what a schedule accepts and refuses at definition, its
ticks, and how ``taskwarren worker`` refuses a schedule that cannot run."""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from taskwarren import Warren
from taskwarren.cli import main
from taskwarren.errors import ArgumentsError, ConfigurationError
from taskwarren.schedules import (
    Every,
    check_schedules,
    schedule_specs,
    spec_of,
    tick_envelope,
    tick_task_id,
)


@pytest.fixture
def app() -> Warren:
    return Warren(url="memory://")


def test_every_ticks_are_aligned_to_the_epoch_and_strictly_after() -> None:
    rule = Every(30)
    assert rule.next_after(0) == 30
    assert rule.next_after(29) == 30
    assert rule.next_after(30) == 60
    assert list(rule.ticks(30, 120)) == [60, 90, 120]
    assert list(rule.ticks(120, 120)) == []


def test_a_schedule_is_read_from_the_task_options(app: Warren) -> None:
    @app.task(queue="reports", cron="0 7 * * mon-fri", tz="Europe/Berlin", name="r.morning")
    def morning(scheduled_at: datetime) -> None: ...

    @app.task(queue="sync", every=timedelta(seconds=30), overlap="allow", name="s.sync")
    def sync() -> None: ...

    @app.task(name="plain")
    def plain(n: int) -> None: ...

    specs = {s.name: s for s in schedule_specs(app)}
    assert set(specs) == {"r.morning", "s.sync"}
    assert specs["r.morning"].spec == ("cron 0 7 * * mon-fri Europe/Berlin; queue=reports; "
                                       "overlap=skip")
    assert specs["r.morning"].overlap == "skip" and specs["r.morning"].queue == "reports"
    assert specs["s.sync"].spec == "every 30s; queue=sync; overlap=allow"
    assert spec_of(plain) is None


def test_a_tick_envelope_carries_the_tick_time_and_a_task_id_of_its_own(app: Warren) -> None:
    @app.task(every=timedelta(seconds=1), name="t.timed")
    def timed(scheduled_at: datetime, label: str = "x") -> None: ...

    @app.task(every=timedelta(seconds=1), name="t.bare")
    def bare() -> None: ...

    envelope = tick_envelope(timed, 1_800_000_000)
    assert envelope.message_id == tick_task_id("t.timed", 1_800_000_000)
    assert envelope.message_id != tick_task_id("t.timed", 1_800_000_001)
    assert envelope.message_id != tick_task_id("t.bare", 1_800_000_000)
    assert timed.decode_call(envelope.body)["scheduled_at"] == datetime.fromtimestamp(
        1_800_000_000, UTC)
    assert tick_envelope(bare, 5).body == b"{}"


@pytest.mark.parametrize(("options", "message"), [
    ({"every": timedelta(milliseconds=500)}, "whole seconds, at least one"),
    ({"every": timedelta(seconds=1.5)}, "whole seconds"),
    ({"every": 30}, "timedelta"),
    ({"cron": "* * * * *", "every": timedelta(seconds=5)}, "not both"),
    ({"every": timedelta(seconds=5), "tz": "Europe/Berlin"}, "tz= belongs with cron="),
    ({"every": timedelta(seconds=5), "overlap": "sometimes"}, "'skip' or 'allow'"),
    ({"every": timedelta(seconds=5), "broadcast": True}, "neither a broadcast"),
    ({"cron": "61 * * * *"}, "61"),
    ({"cron": "0 7 * * *", "tz": "Europe/Berln"}, "Europe/Berln"),
])
def test_a_bad_schedule_is_refused_at_definition(app: Warren, options: dict[str, object],
                                                 message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        app.task(name="bad", **options)(lambda: None)  # type: ignore[call-overload]


def test_a_scheduled_task_may_need_no_argument_but_scheduled_at(app: Warren) -> None:
    with pytest.raises(ConfigurationError, match="give 'region' a default"):
        @app.task(every=timedelta(seconds=5))
        def needs(scheduled_at: datetime, region: str) -> None: ...


def test_a_scheduled_at_the_task_cannot_take_fails_at_start(tmp_path: Path) -> None:
    app = Warren(url="memory://", store_url=f"sqlite:///{tmp_path / 's.db'}")

    @app.task(every=timedelta(seconds=5), overlap="allow")
    def wrong(scheduled_at: int) -> None: ...

    with pytest.raises(ArgumentsError, match="scheduled_at"):
        check_schedules(app)


def test_schedules_need_a_store_and_skipping_overlap_needs_job_state(tmp_path: Path) -> None:
    no_store = Warren(url="memory://")
    no_store.task(every=timedelta(seconds=5), name="a")(lambda: None)
    with pytest.raises(ConfigurationError, match="TASKWARREN_STORE_URL"):
        check_schedules(no_store)
    no_jobs = Warren(url="memory://", store_url=f"sqlite:///{tmp_path / 's.db'}", jobs=False)
    no_jobs.task(every=timedelta(seconds=5), name="a")(lambda: None)
    with pytest.raises(ConfigurationError, match="TASKWARREN_JOBS=on, or give the task "
                                                 "overlap='allow'"):
        check_schedules(no_jobs)


def test_the_worker_stops_at_start_with_one_line_when_a_schedule_cannot_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The module's task goes on a default app of this test's own (restored afterwards).
    monkeypatch.setattr("taskwarren.app._default_app", None)
    name = f"twsched_nojobs_{uuid.uuid4().hex[:8]}"
    module = tmp_path / f"{name}.py"
    module.write_text("from datetime import timedelta\n"
                      "from taskwarren import task\n"
                      "@task(every=timedelta(seconds=1))\n"
                      "def beat() -> None: ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TASKWARREN_URL", f"sqlite:///{tmp_path / 'broker.db'}")
    monkeypatch.delitem(sys.modules, name, raising=False)  # undone after the test
    result = CliRunner().invoke(main, ["worker", name, "-c", "1"])
    assert result.exit_code == 1
    assert "TASKWARREN_JOBS=on" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_scheduled_task_name_must_fit_the_store(app: Warren) -> None:
    with pytest.raises(ConfigurationError, match="at most 235 characters"):
        app.task(name="x" * 236, every=timedelta(seconds=5))(lambda: None)
    app.task(name="x" * 235, every=timedelta(seconds=5))(lambda: None)

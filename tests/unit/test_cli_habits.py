"""The command line's habits: --version, one-line errors (a traceback only with --debug),
purge's refusals, dlq list --json, and shell completion."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import taskwarren
from taskwarren import Warren
from taskwarren.brokers.base import Republish
from taskwarren.cli import main
from taskwarren.message import Envelope, encode, failure_headers
from tests.contract.support import collect, settle

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command, in a process of its own, as a user types it."""
    return subprocess.run([sys.executable, "-m", "taskwarren", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60, env=env, check=False)


def make_dead(app: Warren, queue: str, error: str) -> Envelope:
    """Publish a message to ``queue`` and dead-letter it as a worker does; the dead copy."""
    app.broker.publish(queue, [encode("shop.charge", queue, b'{"n": 1}')])
    consumer = app.broker.consumer()
    consumer.consume(queue, prefetch=1)
    (got,) = collect(consumer, 1)
    dead = got.envelope.with_headers(failure_headers("ValueError", error))
    settle(consumer, [(got, Republish(queue, dead, dead=True))])
    consumer.close()
    return dead


def test_version_prints_the_package_version() -> None:
    result = CliRunner().invoke(main, ["--version"])

    assert result.exit_code == 0
    assert result.output == f"taskwarren {taskwarren.__version__}\n"


def test_an_unknown_tasks_module_ends_with_one_line_and_exit_1() -> None:
    out = run("queues", "-m", "no_such_module_here", "--url", "memory://")

    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "Error: ModuleNotFoundError: No module named 'no_such_module_here' "
        "(--debug shows the traceback)"]
    assert "Traceback" not in out.stderr


def test_debug_shows_the_traceback_instead() -> None:
    out = run("--debug", "queues", "-m", "no_such_module_here", "--url", "memory://")

    assert out.returncode == 1
    assert "Traceback (most recent call last)" in out.stderr
    assert "ModuleNotFoundError: No module named 'no_such_module_here'" in out.stderr


@pytest.mark.parametrize("args", [
    ["queues", "q1", "--url", "bogus://host"],
    ["dlq", "list", "q1", "--url", "bogus://host"],
    ["purge", "q1", "--yes", "--url", "bogus://host"],
    ["send", "t", "-m", "json", "--url", "bogus://host"],
    ["topology", "plan", "json", "--url", "bogus://host"],
])
def test_a_bad_broker_url_ends_every_command_with_one_line(args: list[str]) -> None:
    out = run(*args)

    assert out.returncode in (1, 2), out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 or lines[-1].startswith("Error: "), out.stderr
    assert lines[-1].startswith("Error: ")


def test_a_password_in_a_bad_url_is_not_shown() -> None:
    out = run("queues", "q1", "--url", "amqp://user:s3cret-pw@host:notaport/")

    assert out.returncode == 1
    assert "s3cret-pw" not in out.stderr + out.stdout
    assert out.stderr.startswith("Error: the broker URL has a port that is not a number")


@pytest.mark.parametrize(("queue", "says"), [
    ("orders.dead", "is a dead-letter queue: use `taskwarren dlq purge orders --yes`"),
    ("taskwarren.delay.3", "is taskwarren's own"),
])
def test_purge_refuses_dead_letter_queues_and_delay_levels(queue: str, says: str) -> None:
    result = CliRunner().invoke(main, ["purge", queue, "--yes", "--url", "memory://"])

    assert result.exit_code == 2
    assert says in result.output


def test_purge_refuses_without_yes_and_deletes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tw.db"
    app = Warren(url=url)
    app.declare(["orders"])
    app.broker.publish("orders", [encode("t", "orders", b"{}")])

    out = run("purge", "orders", "--url", url)

    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "Error: purging deletes the messages waiting in orders for good: add --yes")
    assert app.broker.stats("orders").ready == 1  # type: ignore[attr-defined]
    app.close()


def test_purge_deletes_the_ready_messages_and_keeps_dead_and_delayed_ones(
    tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/tw.db"
    app = Warren(url=url)
    app.declare(["orders"])
    make_dead(app, "orders", "bad")
    app.broker.publish("orders", [encode("t", "orders", b"{}") for _ in range(3)])
    app.broker.publish("orders", [encode("t", "orders", b"{}")], delay_s=3600)

    out = run("purge", "orders", "--yes", "--url", url)

    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "purged 3 from orders",
        "kept: 0 being run, 1 dead (`taskwarren dlq purge orders --yes`), "
        "1 delayed (they arrive when due)"]
    stats = app.broker.stats("orders")  # type: ignore[attr-defined]
    assert (stats.ready, stats.dead, stats.delayed) == (0, 1, 1)
    app.close()


def test_dlq_list_json_gives_every_dead_letter_with_its_error_in_full(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tw.db"
    app = Warren(url=url)
    app.declare(["orders"])
    error = "boom \x1b[2J " + "x" * 300
    dead = make_dead(app, "orders", error)

    app.close()

    out = run("dlq", "list", "orders", "--json", "--url", url)

    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    assert row["id"] == dead.message_id
    assert row["task"] == "shop.charge"
    assert row["error_type"] == "ValueError"
    assert row["error"] == error  # JSON escapes the control characters; nothing is cut
    assert "\x1b" not in out.stdout
    assert row["failed_at"] == dead.headers["tw-failed-at"]


def test_queues_without_names_on_sqlite_asks_for_names_or_modules(tmp_path: Path) -> None:
    out = run("queues", "--url", f"sqlite:///{tmp_path}/tw.db")

    assert out.returncode == 1
    assert out.stderr.startswith("Error: cannot list every queue (the broker is not RabbitMQ")
    assert "give the tasks modules with -m MODULE" in out.stderr


def test_bash_completion_prints_a_script_for_the_taskwarren_command() -> None:
    result = CliRunner().invoke(main, [], prog_name="taskwarren",
                                env={"_TASKWARREN_COMPLETE": "bash_source"})

    assert result.exit_code == 0
    assert "_taskwarren_completion()" in result.output
    assert "complete -o nosort -F _taskwarren_completion taskwarren" in result.output


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_completion_scripts_are_printed_too(shell: str) -> None:
    result = CliRunner().invoke(main, [], prog_name="taskwarren",
                                env={"_TASKWARREN_COMPLETE": f"{shell}_source"})

    assert result.exit_code == 0
    assert "_TASKWARREN_COMPLETE" in result.output


def test_completion_completes_command_names() -> None:
    result = CliRunner().invoke(main, [], prog_name="taskwarren", env={
        "_TASKWARREN_COMPLETE": "bash_complete", "COMP_WORDS": "taskwarren pu",
        "COMP_CWORD": "1"})

    assert result.exit_code == 0
    assert result.output.split() == ["plain,purge"]


def test_send_with_arguments_that_are_not_json_is_a_usage_error(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"n": 1, "ledger": "/dev/null"}\n{bad\n')

    out = run("send", "work", "-m", "tests.integration.twtasks", "--file", str(jobs),
              "--url", "memory://")

    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith(
        "Error: Invalid value for --file line 2: not JSON: Expecting property name")


def test_the_dashboard_refuses_an_unsupported_broker_url_before_serving() -> None:
    out = run("web", "--port", "0", "--url", "bogus://host")

    assert out.returncode == 1
    assert out.stderr.strip() == ("Error: unsupported broker URL scheme 'bogus': use "
                                  "amqp://, amqps://, sqlite:/// or memory://")

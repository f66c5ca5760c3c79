"""The outbox under faults: every committed order's task runs, no rolled-back one does.

Issue 12's proof, on the real MariaDB and PostgreSQL (and SQLite). Applications
(``outbox_app.py``) place orders: per order one transaction that sends its task with
``db=conn`` and inserts the order, then commits, or rolls back (30 %, on purpose).
Relays publish the committed outbox rows; worker pools run them into a ledger. The
checker joins ``orders`` (what committed) with the ledger (what ran): every committed
order ran at least once, no rolled-back order ran, the outbox drains to empty, and each
duplicate is counted and attributed. Faults: the application killed between its INSERT
and its COMMIT and right after its COMMIT, relays killed inside a publish and between
the broker's confirm and the DELETE, AMQP links cut while a relay publishes, two relays
at once, a broker restart, and the relays' database sessions ended by the server. Two
sabotages prove the checker can fail: a relay that deletes before it publishes must be
reported losing orders, an application that publishes outside its transaction running
rolled-back ones.

RabbitMQ 3.10 only (``rabbitmq(releases=...)``): the outbox is the database's side; the
broker's side is what ``test_chaos.py`` runs on every release.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.history import Row, ledger_numbers
from tests.chaos.nodes import RabbitNode
from tests.chaos.outbox_harness import OutboxScenario
from tests.support.databases import fresh_database, kill_store_sessions
from tests.support.proxy import FaultyProxy

pytestmark = [pytest.mark.chaos, pytest.mark.rabbitmq(releases=("3.10",)), pytest.mark.slow,
              pytest.mark.timeout(150)]

#: Orders each application run places, where a scenario does not say otherwise.
ORDERS = 400


@pytest.fixture(params=["mysql", "postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database of each kind (the application's and the job store's)."""
    with fresh_database(request.param, tmp_path) as url:
        yield url


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def _label(name: str, url: str) -> str:
    return f"{name} [{url.split(':', 1)[0]}]"


def test_application_killed_before_its_commit_never_runs_after_it_always_does(
        shared_url: str, db_url: str, tmp_path: Path, chaos_results: list[Row]) -> None:
    with OutboxScenario(_label("O1 application kill -9 before/after COMMIT", db_url),
                        shared_url, shared_url, tmp_path, chaos_results, db_url,
                        tasks=ORDERS) as s:
        s.start_pool("a")
        s.start_relay("r")
        held: dict[str, list[int]] = {"before-commit": [], "after-commit": []}
        for hold_at in ("before-commit", "after-commit") * 2:
            app = s.run_app(50, hold=s.rng.randint(5, 45), hold_at=hold_at)
            held[hold_at].append(s.kill_app_at_hold(app))
        app = s.run_app(ORDERS - 200)
        s.wait_app(app)
        committed = s.settle()
        s.check_claims(disjoint=True)
        ran = ledger_numbers(s.ledger)
        for n in held["before-commit"]:
            if n in committed or n in ran:
                s.problems.append(f"order {n}, killed before its COMMIT: committed "
                                  f"{n in committed}, ran {n in ran}")
        for n in held["after-commit"]:
            if n not in committed:
                s.problems.append(f"order {n}, killed right after its COMMIT, is not in orders")
        s.history.note(f"killed before COMMIT at {held['before-commit']}, after COMMIT at "
                       f"{held['after-commit']}")
        s.quiesce()
        s.verdict()


def test_relay_killed_mid_publish_and_between_confirm_and_delete_loses_nothing(
        shared_url: str, db_url: str, tmp_path: Path, chaos_results: list[Row]) -> None:
    """Each killed relay's rows come back when its lease ends and run, perhaps twice
    (same message id: the claim journals say which relay held them)."""
    with OutboxScenario(_label("O2 relay kill -9 mid-publish / before DELETE", db_url),
                        shared_url, shared_url, tmp_path, chaos_results, db_url,
                        tasks=ORDERS) as s:
        s.start_pool("a")
        app = s.run_app(ORDERS, pause_s=0.01)
        deaths = [("publish", "3"), ("delete", "5"), ("publish", "0"), ("delete", "5")]
        for i, (at, within_ms) in enumerate(deaths):
            s.start_relay(f"doomed{i}", "--die-at", at, "--die-within-ms", within_ms,
                          lease_s=2.0)
            s.await_relay_death(f"doomed{i}")
        s.start_relay("last", lease_s=2.0)
        s.wait_app(app)
        s.settle()
        claims = s.check_claims(disjoint=False)
        s.history.note("relays died: " + ", ".join(sorted(claims.dying.values())))
        s.quiesce()
        s.verdict()


def test_amqp_links_cut_while_the_relay_publishes_lose_nothing(
        shared_url: str, db_url: str, tmp_path: Path, chaos_results: list[Row]) -> None:
    proxy = FaultyProxy(_port(shared_url))
    try:
        with OutboxScenario(_label("O3 AMQP links cut under the relay", db_url), shared_url,
                            shared_url, tmp_path, chaos_results, db_url, tasks=ORDERS,
                            relay_url=proxy.url()) as s:
            s.start_pool("a")
            s.start_relay("r", "--publish-timeout-s", "5")
            app = s.run_app(ORDERS, pause_s=0.01)
            cuts = 0
            while app.proc.poll() is None or cuts < 5:
                time.sleep(s.rng.uniform(0.2, 0.6))
                cut = proxy.cut_all()
                s.history.fault("cut all links", str(cut))
                cuts += 1
            s.wait_app(app)
            s.settle()
            s.check_claims(disjoint=False)
            s.quiesce()
            s.verdict()
    finally:
        proxy.close()


def test_two_relays_at_once_claim_disjoint_rows_and_publish_each_once(
        shared_url: str, db_url: str, tmp_path: Path, chaos_results: list[Row]) -> None:
    with OutboxScenario(_label("O4 two relays at once", db_url), shared_url, shared_url,
                        tmp_path, chaos_results, db_url, tasks=2 * ORDERS) as s:
        s.start_pool("a")
        backlog = s.run_app(ORDERS)
        s.wait_app(backlog)
        # Both start on a backlog at once, in small claims, and go on while orders flow.
        # A long lease: a publish stalled for seconds on a loaded machine must not let the
        # other relay claim the same rows (that would be a duplicate, not this test's bug).
        for name in ("r1", "r2"):
            s.start_relay(name, "--batch", "20", wait=False, lease_s=30.0)
        app = s.run_app(ORDERS, pause_s=0.002)
        for name in ("r1", "r2"):
            s.await_relay_start(name)
        s.wait_app(app)
        s.settle()
        claims = s.check_claims(disjoint=True)
        s.quiesce()
        verdict = s.verdict()
    assert verdict.duplicates == 0, verdict.explain()
    assert len({pid for pids in claims.by_task.values() for pid in pids}) == 2, \
        "both relays should have claimed rows"


def test_broker_restart_under_the_relay_beside_the_pool_loses_nothing(
        private_node: RabbitNode, db_url: str, tmp_path: Path,
        chaos_results: list[Row]) -> None:
    """The relay here is the one ``taskwarren worker`` runs beside its pool."""
    node = private_node
    with OutboxScenario(_label("O5 broker restart, relay beside the pool", db_url), node.url,
                        node.url, tmp_path, chaos_results, db_url, tasks=ORDERS,
                        pool_env={"TASKWARREN_STORE_URL": db_url}) as s:
        s.start_pool("a")
        app = s.run_app(ORDERS, pause_s=0.01)
        for _ in range(2):
            time.sleep(s.rng.uniform(0.5, 1.5))
            started = time.monotonic()
            node.restart_app()
            s.history.fault("broker restart", f"{time.monotonic() - started:.1f}s down")
        s.wait_app(app)
        s.settle()
        s.quiesce()
        s.verdict()


@pytest.mark.parametrize("dialect", ["mysql", "postgresql"])
def test_relay_whose_database_sessions_are_killed_reconnects_and_loses_nothing(
        shared_url: str, dialect: str, tmp_path: Path, chaos_results: list[Row]) -> None:
    """The server ends the relays' sessions (a restart, a failover, a DBA's KILL) while
    orders flow: each relay must reconnect, not crash or stall with a dead connection.

    Failed before the fix in ``Store._cursor``: on PostgreSQL the relay died of a raw
    ``psycopg.OperationalError`` ("the connection is closed"); on MariaDB it kept its
    dead connection and relayed nothing more.
    """
    with fresh_database(dialect, tmp_path) as url, \
            OutboxScenario(_label("O6 relay's database sessions killed", url), shared_url,
                           shared_url, tmp_path, chaos_results, url, tasks=ORDERS) as s:
        s.start_pool("a")
        s.start_relay("r1")
        s.start_relay("r2")
        app = s.run_app(ORDERS, pause_s=0.01)
        while app.proc.poll() is None:
            time.sleep(s.rng.uniform(0.5, 1.0))
            s.history.fault("database sessions killed", str(kill_store_sessions(url)))
        s.wait_app(app)
        s.settle(timeout=30)
        s.check_claims(disjoint=False)
        s.quiesce()
        s.verdict()


def test_sabotage_a_relay_that_deletes_before_publishing_is_caught_losing_orders(
        shared_url: str, tmp_path: Path, chaos_results: list[Row]) -> None:
    """The checker can fail: a relay that deletes its claimed rows first and dies before
    publishing them loses them, and the verdict says so."""
    with fresh_database("postgresql", tmp_path) as url, \
            OutboxScenario(_label("S sabotage: delete before publish (must FAIL)", url),
                           shared_url, shared_url, tmp_path, chaos_results, url,
                           tasks=100) as s:
        s.start_pool("a")
        app = s.run_app(100)
        s.wait_app(app)
        s.start_relay("saboteur", "--sabotage", "delete-first", "--die-at", "publish",
                      "--die-within-ms", "0")
        s.await_relay_death("saboteur")
        s.start_relay("honest")
        committed = s.settle(timeout=3)
        s.problems.clear()  # the drain's own complaint; the verdict must find the loss
        with pytest.raises(AssertionError, match=r"confirmed task\(s\) lost"):
            s.verdict()
    assert chaos_results[-1].lost == len(committed) > 0


def test_sabotage_an_application_that_publishes_at_once_is_caught_running_rolled_back_orders(
        shared_url: str, tmp_path: Path, chaos_results: list[Row]) -> None:
    """The checker's other half can fail too: tasks published outside the transaction
    run for orders that rolled back."""
    with fresh_database("postgresql", tmp_path) as url, \
            OutboxScenario(_label("S sabotage: publish outside the transaction (must FAIL)",
                                  url), shared_url, shared_url, tmp_path, chaos_results, url,
                           tasks=100) as s:
        s.start_pool("a")
        app = s.run_app(100, "--sabotage", "publish-direct")
        s.wait_app(app)
        committed = s.settle(timeout=10)
        s.quiesce()  # everything published has run
        ran = ledger_numbers(s.ledger)
        with pytest.raises(AssertionError, match=r"order\(s\) that never committed ran"):
            s.verdict()
    assert len(ran - set(committed)) == s.attempted - len(committed) > 0

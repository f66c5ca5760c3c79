"""Cancels racing real workers: ``taskwarren worker`` on RabbitMQ (4.0) with a job store
(PostgreSQL, MariaDB, SQLite), a thousand delayed jobs, half of them cancelled around
the moment they come due, some while no worker is up.

What a cancel answered must be what happened: a job whose cancel said done never runs;
one it found running ran; every job not cancelled ran.

The test runs in a virtual host of its own (its thousand delay messages and cancels
stay out of the shared one's way).
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from taskwarren import Warren
from taskwarren.store import open_store
from taskwarren.store.jobs import Cancelled
from tests.integration import twtasks
from tests.support.databases import connect
from tests.support.rabbit import Release, unique_queue
from tests.support.workers import Ledger, Pool, wait_until

# On 4.0 only: it runs in the second pytest, beside the longer first one.
pytestmark = [pytest.mark.rabbitmq(releases=("4.0",)), pytest.mark.slow]
MODULE = "tests.integration.twtasks"

#: Jobs the broker delays (due within the next seconds), and jobs the outbox holds.
SHORT = 1_000
LONG = 20
#: The due times of the short jobs spread over this many seconds, from this one.
SPREAD_S = (3.0, 15.0)
#: No worker runs during this window (seconds after the sends began), or for as long,
#: starting a second after the last send where sending took longer (a loaded machine):
#: some cancels must fall in it.
DOWN_S = (7.0, 10.0)


@dataclass
class Plan:
    """One job: its id, ledger number, when it comes due, and the cancel's answer."""

    n: int
    task_id: str
    due: float
    cancel_at: float | None = None
    outcome: Cancelled | None = None


@pytest.fixture
def vhost_url(rabbit_url: str, rabbit_release: Release) -> Iterator[str]:
    """The shared broker's URL on a virtual host of the test's own, deleted afterwards."""
    name = f"tw-{uuid.uuid4().hex[:10]}"
    rabbit_release.ctl("add_vhost", name)
    try:
        rabbit_release.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield rabbit_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with contextlib.suppress(subprocess.SubprocessError):  # the broker may be busy
            rabbit_release.ctl("delete_vhost", name)


@pytest.mark.timeout(480)
def test_a_cancel_says_truly_whether_the_job_runs(store_url: str, vhost_url: str,
                                                  ledger: Ledger, tmp_path: Path) -> None:
    rabbit_url, queue = vhost_url, unique_queue()
    store = open_store(store_url)
    store.init()
    store.close()
    rng = random.Random(13)
    app = Warren(url=rabbit_url, store_url=store_url)
    work = app.task(twtasks.work.fn, name=twtasks.work.name, queue=queue)
    env = {"TASKWARREN_STORE_URL": store_url}
    pool = Pool(MODULE, [queue], rabbit_url, concurrency=2, log_path=tmp_path / "w1.log",
                env=env)
    pools = [pool]
    plans: list[Plan] = []
    codes: list[int] = []  # the pools' exit codes (1 after an outage of the store or broker)
    try:
        # Through the outbox: a delay over 60 s waits in the store, not the broker.
        conn = connect(store_url)
        for n in range(LONG):
            task_id = work.options(db=conn, delay=61).send(n, str(ledger), 0.05)
            plans.append(Plan(n, task_id, time.time() + 61))
        conn.commit()
        conn.close()
        start = time.time()
        for n in range(LONG, LONG + SHORT):
            delay = rng.uniform(*SPREAD_S)
            task_id = work.options(delay=delay).send(n, str(ledger), 0.05)
            plans.append(Plan(n, task_id, start + delay))
        sent_s = time.time() - start
        wait_until(lambda: sum(app.jobs.counts().values()) == LONG + SHORT, 60,
                   what=f"the projector to record every job ({sent_s:.1f}s to send them)")
        for plan in rng.sample(plans, (LONG + SHORT) // 2):
            offset = rng.uniform(-0.4, 0.3) if plan.n >= LONG else rng.uniform(0, 10)
            plan.cancel_at = (plan.due if plan.n >= LONG else start) + offset
        cancels = sorted((p for p in plans if p.cancel_at is not None),
                         key=lambda p: p.cancel_at or 0.0)
        down = False
        offline = 0
        down_from = max(start + DOWN_S[0], start + sent_s + 1.0)
        down_until = down_from + DOWN_S[1] - DOWN_S[0]
        for plan in cancels:
            assert plan.cancel_at is not None
            now = time.time()
            if not down and now >= down_from:
                codes.append(pool.stop())
                down = True
            if down and len(pools) == 1 and now >= down_until:
                pool = Pool(MODULE, [queue], rabbit_url, concurrency=2,
                            log_path=tmp_path / "w2.log", env=env)
                pools.append(pool)
            if plan.cancel_at > now:
                time.sleep(plan.cancel_at - now)
            offline += down and len(pools) == 1
            plan.outcome = app.jobs.cancel_job(plan.task_id)
        if len(pools) == 1:
            codes.append(pool.stop())
            pools.append(Pool(MODULE, [queue], rabbit_url, concurrency=2,
                              log_path=tmp_path / "w2.log", env=env))
        done = {p.n for p in plans if p.outcome is not None and p.outcome.done}
        expected = {p.n for p in plans} - done
        try:
            wait_until(lambda: expected <= set(ledger.count("end")), 240,
                       what="every job not cancelled to run")
        except AssertionError:
            missing = sorted(expected - set(ledger.count("end")))
            jobs = [(n, app.jobs.get(plans[n].task_id), plans[n].outcome)
                    for n in missing[:5]]
            raise AssertionError(f"{len(missing)} never ran: {jobs}") from None
        time.sleep(1.0)  # a cancelled job that was (wrongly) delivered would show by now
        codes.append(pools[-1].stop())
    finally:
        for p in pools:
            p.kill()
        app.close()

    started = set(ledger.count("start"))
    outcomes = [p.outcome for p in plans if p.outcome is not None]
    running = {p.n for p in plans if p.outcome is not None and not p.outcome.done
               and p.outcome.state == "running"}
    late = {p.n for p in plans if p.outcome is not None and not p.outcome.done}
    unknown = [p.outcome for p in plans if p.outcome is not None and p.outcome.state == ""
               and not p.outcome.done]
    via_outbox = sum(1 for o in outcomes if o.done and "outbox" in o.how)
    print(f"\n{store_url.split(':')[0]}: {len(plans)} jobs sent in {sent_s:.1f}s, "
          f"{len(outcomes)} cancels: {len(done)} done ({via_outbox} from the outbox, "
          f"{offline} with no worker up), {len(late)} too late ({len(running)} running); "
          f"ran {len(started)}")
    assert not unknown, unknown[:3]
    assert not done & started, f"cancelled but ran: {sorted(done & started)[:10]}"
    assert running <= started, f"said running, never ran: {sorted(running - started)[:10]}"
    assert late <= started
    assert started == expected
    assert ledger.count("start") == ledger.count("end")
    assert max(ledger.count("start").values()) == 1
    assert via_outbox > 0 and offline > 0 and done

"""Unique keys under a race: 32 producers send the same 50 keys at once, on SQLite,
PostgreSQL and MariaDB.

Each producer (a thread with its own connections) sends every key once, in its own
random order: some sends in the app's own transaction, some in a transaction of the
producer's that it commits, some in one it rolls back. No job finishes meanwhile, so
exactly one job per key may exist, every id a committed send returned must be that
job, and a rolled-back send must leave nothing.

MariaDB may roll a producer's transaction back as a deadlock when two wait on a key a
third rolls back (InnoDB's gap locks): a send in the app's own transaction is then run
again by taskwarren; a ``db=`` send raises a StoreError saying to run the transaction
again, and must have left nothing either.
"""

from __future__ import annotations

import random
import threading
import uuid
from dataclasses import dataclass

from taskwarren import Warren
from taskwarren.errors import StoreError
from taskwarren.store import Store
from taskwarren.store.drivers import lost_race
from taskwarren.store.schema import JOBS, OUTBOX
from tests.support.databases import connect

PRODUCERS = 32
KEYS = 50


@dataclass(frozen=True)
class Sent:
    """One producer's send: the key, the id it asked for, the id it got, and how."""

    key: str
    asked: str
    got: str
    how: str  # "own" (no db=), "commit" or "rollback"


def test_one_job_per_key_when_32_producers_race_with_commits_and_rollbacks(
        store_url: str, store: Store) -> None:
    app = Warren(url="memory://", store_url=store_url)
    task = app.task(lambda n: None, name="u.sync", queue="u")
    keys = [f"account-{k}" for k in range(KEYS)]
    sent: list[Sent] = []
    errors: list[str] = []
    lost: list[Sent] = []
    start = threading.Barrier(PRODUCERS)
    lock = threading.Lock()

    def produce(seed: int) -> None:
        rng = random.Random(seed)
        mine = keys[:]
        rng.shuffle(mine)
        conn = connect(store_url)
        try:
            start.wait()
            for n, key in enumerate(mine):
                how = rng.choice(("own", "commit", "rollback"))
                asked = str(uuid.uuid4())
                try:
                    options = task.options(unique_key=key, task_id=asked,
                                           db=None if how == "own" else conn)
                    got = options.send(n)
                    if how == "commit":
                        conn.commit()
                    elif how == "rollback":
                        conn.rollback()
                except StoreError as exc:
                    conn.rollback()
                    with lock:
                        if how != "own" and lost_race(exc) and "run it again" in str(exc):
                            lost.append(Sent(key, asked, "", how))  # the caller's to retry
                        else:
                            errors.append(f"{how} {key}: {exc} <- {exc.__cause__!r}")
                    continue
                with lock:
                    sent.append(Sent(key, asked, got, how))
        finally:
            conn.close()

    threads = [threading.Thread(target=produce, args=(seed,)) for seed in range(PRODUCERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    app.close()
    assert not any(t.is_alive() for t in threads)
    assert not errors, f"{len(errors)} sends failed, first: {errors[:3]}"
    assert len(sent) + len(lost) == PRODUCERS * KEYS

    with store.cursor() as cur:
        cur.execute(f"SELECT task_id, unique_key, state FROM {JOBS}")
        jobs = {str(r[0]): (str(r[1]), str(r[2])) for r in cur.fetchall()}
        cur.execute(f"SELECT task_id FROM {OUTBOX}")
        outbox = {str(r[0]) for r in cur.fetchall()}
        store.conn.commit()
    holders = {key: task_id for task_id, (key, _) in jobs.items()}
    # Exactly one job per key, queued, each in the outbox to be published.
    assert len(jobs) == KEYS and sorted(holders) == sorted(keys), len(jobs)
    assert {state for _, state in jobs.values()} == {"queued"}
    assert outbox == set(jobs)
    kept = [s for s in sent if s.how != "rollback"]
    for s in kept:
        assert s.got == holders[s.key], s
    # A rolled-back send that made its own job left nothing of it.
    made = [s for s in sent if s.how == "rollback" and s.got == s.asked]
    for s in made + lost:
        assert s.asked not in jobs and s.asked not in outbox, s
    # The race was real: ids handed back by someone else's job, and rollbacks that made one.
    hows = {how: sum(1 for s in sent if s.how == how) for how in ("own", "commit", "rollback")}
    print(f"sends {hows}; db= transactions that lost a race {len(lost)}; rolled back after "
          f"making a job {len(made)}; committed sends answered with another's job "
          f"{sum(1 for s in kept if s.got != s.asked)}")
    assert made and any(s.got != s.asked for s in kept)

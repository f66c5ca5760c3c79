"""An application for the outbox chaos scenarios: orders, each with its task, in one transaction.

``python -m tests.chaos.outbox_app --store-url U --queue Q --ledger L --first N --count C``
places orders ``N .. N+C-1``. Per order it opens a transaction, sends
``chaostasks.record(n)`` with ``db=conn`` (an outbox row), inserts ``orders(id=n,
task_id)``, then commits, or rolls back on purpose (``--rollback``, a fraction, drawn
from ``--seed``). It records nothing else: what committed is in ``orders``.

``--hold K --hold-at before-commit`` stops at order ``K`` after both statements and
before the COMMIT, writes ``holding K before-commit`` to ``--status`` and sleeps, for
the test to ``kill -9`` it there; ``--hold-at after-commit`` does the same right after
order ``K`` committed (order ``K`` then never rolls back on purpose). When the server
ends its session, it carries on with the next order on a new connection.
``--sabotage publish-direct`` publishes each task at once instead of writing it to the
outbox (what an after-commit hook gets wrong, done worse): the checker must catch the
rolled-back orders that run.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import time
from typing import Any

from taskwarren import Warren
from tests.chaos import chaostasks
from tests.chaos.producer import append_line as status
from tests.support.databases import connect

#: The business table: one row per committed order, with its task's id.
ORDERS_DDL = {
    "sqlite": "CREATE TABLE orders (id INTEGER PRIMARY KEY, task_id TEXT NOT NULL)",
    "postgresql": "CREATE TABLE orders (id BIGINT PRIMARY KEY, task_id VARCHAR(64) NOT NULL)",
    "mysql": "CREATE TABLE orders (id BIGINT PRIMARY KEY, task_id VARCHAR(64) NOT NULL) "
             "ENGINE=InnoDB",
}


def dialect_of(url: str) -> str:
    return url.split(":", 1)[0]


def create_orders(url: str) -> None:
    """Create the ``orders`` table in the store's database."""
    conn = connect(url)
    try:
        cur = conn.cursor()
        cur.execute(ORDERS_DDL[dialect_of(url)])
        conn.commit()
    finally:
        conn.close()


def committed_orders(url: str) -> dict[int, str]:
    """Order number -> task id, for every order that committed."""
    conn = connect(url)
    try:
        cur = conn.cursor()
        cur.execute("SELECT id, task_id FROM orders")
        rows = {int(n): str(task_id) for n, task_id in cur.fetchall()}
        conn.commit()
        return rows
    finally:
        conn.close()


def place(conn: Any, task: Any, n: int, ledger: str, placeholder: str,
          direct: bool = False) -> None:
    """The two statements of order ``n``: its task (an outbox row), then the order.

    ``direct`` (a sabotage): publish the task at once instead, outside the transaction.
    """
    task_id = task.send(n, ledger) if direct else task.options(db=conn).send(n, ledger)
    cur = conn.cursor()
    cur.execute(f"INSERT INTO orders (id, task_id) VALUES ({placeholder}, {placeholder})",
                (n, task_id))
    cur.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="broker (the app never publishes)")
    parser.add_argument("--store-url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--status", required=True)
    parser.add_argument("--first", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--rollback", type=float, default=0.3)
    parser.add_argument("--seed", default="0")
    parser.add_argument("--hold", type=int, default=-1)
    parser.add_argument("--hold-at", choices=("before-commit", "after-commit"),
                        default="before-commit")
    parser.add_argument("--pause-s", type=float, default=0.0, help="between orders")
    parser.add_argument("--sabotage", choices=("publish-direct",))
    args = parser.parse_args()
    rng = random.Random(f"{args.seed}-{args.first}")
    app = Warren(url=args.url)
    task = app.task(name=chaostasks.record.name, queue=args.queue)(chaostasks.record.fn)
    conn = connect(args.store_url)
    placeholder = "?" if dialect_of(args.store_url) == "sqlite" else "%s"
    status(args.status, "started\n")
    for n in range(args.first, args.first + args.count):
        rollback = rng.random() < args.rollback and n != args.hold
        try:
            place(conn, task, n, args.ledger, placeholder, args.sabotage == "publish-direct")
            if n == args.hold and args.hold_at == "before-commit":
                status(args.status, f"holding {n} before-commit\n")
                time.sleep(3600)
            if rollback:
                conn.rollback()
            else:
                conn.commit()
        except Exception:
            # The server ended the session (a scenario kills them): the transaction is
            # gone, or its COMMIT went through unanswered. As an application would, go
            # on with the next order on a new connection; ``orders`` says which it was.
            with contextlib.suppress(Exception):
                conn.close()
            conn = connect(args.store_url)
        if n == args.hold:
            status(args.status, f"holding {n} after-commit\n")
            time.sleep(3600)
        if args.pause_s:
            time.sleep(args.pause_s)
    conn.close()
    app.close()
    status(args.status, "done\n")


if __name__ == "__main__":
    main()

"""``python manage.py taskwarren_worker``: a worker pool in a real Django project runs
what an atomic block sent through the outbox, once, and nothing a rolled-back one sent;
each task starts without the connection the one before it opened."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from taskwarren.store import open_store
from taskwarren.store.schema import OUTBOX
from tests.support.workers import wait_until

ROOT = Path(__file__).resolve().parents[2]

FILES = {
    "manage.py": """
        import os
        import sys

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop_settings")
        from django.core.management import execute_from_command_line

        execute_from_command_line(sys.argv)
    """,
    "shop_settings.py": """
        import os

        SECRET_KEY = "not a secret: a test project"
        USE_TZ = True
        INSTALLED_APPS = ["taskwarren.contrib.django"]
        DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                                 "NAME": os.environ["SHOP_DB"]}}
    """,
    "shop_tasks.py": """
        import os

        from django.db import connection

        from taskwarren import Warren

        app = Warren()

        @app.task(queue="shop")
        def confirm(order_id: int) -> None:
            # Whether the task starts without the connection an earlier one opened: the
            # command's middleware closes it when a task ends (CONN_MAX_AGE is 0).
            fresh = connection.connection is None
            with connection.cursor() as cur:
                cur.execute("INSERT INTO confirmed (id, pid, fresh) VALUES (%s, %s, %s)",
                            [order_id, os.getpid(), fresh])
    """,
}

SEND = """
from django.db import connection, transaction

import shop_tasks

with connection.cursor() as cur:
    cur.execute("CREATE TABLE confirmed (id INTEGER PRIMARY KEY, pid INTEGER, fresh INTEGER)")
try:
    with transaction.atomic():
        shop_tasks.confirm.options(db=connection).send(1)
        raise RuntimeError("the order is refused: roll back")
except RuntimeError:
    pass
for order_id in (2, 3):
    with transaction.atomic():
        shop_tasks.confirm.options(db=connection).send(order_id)
"""


def _confirmed(db: Path) -> list[tuple[int, int, int]]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute("SELECT id, pid, fresh FROM confirmed ORDER BY id").fetchall()
    finally:
        conn.close()


def test_the_management_command_runs_what_a_committed_block_sent_once(tmp_path: Path) -> None:
    for name, text in FILES.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    db = tmp_path / "shop.db"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}", "SHOP_DB": str(db),
           "TASKWARREN_URL": f"sqlite:///{tmp_path / 'broker.db'}",
           "TASKWARREN_STORE_URL": f"sqlite:///{db}"}
    store = open_store(env["TASKWARREN_STORE_URL"])
    store.init()  # `taskwarren store init`
    store.close()
    subprocess.run([sys.executable, "manage.py", "shell", "-c", SEND], cwd=tmp_path, env=env,
                   check=True, timeout=60)

    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        pool = subprocess.Popen(
            [sys.executable, "manage.py", "taskwarren_worker", "shop_tasks", "-c", "1"],
            cwd=tmp_path, env=env, stdout=out, stderr=out, start_new_session=True)
        try:
            wait_until(lambda: len(_confirmed(db)) == 2, timeout=60, what="both tasks to run")
            pool.send_signal(signal.SIGTERM)
            code = pool.wait(60)
        finally:
            if pool.poll() is None:
                os.killpg(pool.pid, signal.SIGKILL)
                pool.wait(10)

    assert code == 0, log.read_text()
    confirmed = _confirmed(db)
    assert [order_id for order_id, _, _ in confirmed] == [2, 3]
    [(_, pid_2, _), (_, pid_3, _)] = confirmed
    assert pid_2 == pid_3 != pool.pid  # one child ran both (-c 1)
    assert all(fresh == 1 for _, _, fresh in confirmed)
    conn = sqlite3.connect(db)
    assert conn.execute(f"SELECT COUNT(*) FROM {OUTBOX}").fetchone() == (0,)
    conn.close()

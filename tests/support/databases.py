"""The job store's databases in tests: a fresh database per use, on this machine's servers.

PostgreSQL (127.0.0.1:5432, trust, user postgres) and MariaDB (127.0.0.1:3306, root, no
password) run on the machine; each :func:`fresh_database` makes a database of its own
(``tw_<random>``) and drops it afterwards, so tests running side by side never share
taskwarren's tables. SQLite gets a file under the test's temporary directory.

Without a server a test skips, but under ``CI`` it fails: CI can never pass by skipping.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

#: The dialects the store tests run on, as pytest ids.
DIALECTS = ("sqlite", "postgresql", "mysql")

PG_ADMIN = os.environ.get("TASKWARREN_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_HOST = os.environ.get("TASKWARREN_TEST_MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("TASKWARREN_TEST_MYSQL_PORT", "3306"))


def _unavailable(what: str, exc: BaseException) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} unreachable under CI: {exc}")
    pytest.skip(f"{what} unreachable: {exc}")


@contextmanager
def fresh_database(dialect: str, tmp_path: Path) -> Iterator[str]:
    """A store URL of an empty database of ``dialect`` of its own, dropped afterwards."""
    name = f"tw_{uuid.uuid4().hex[:12]}"
    if dialect == "sqlite":
        yield f"sqlite:///{tmp_path / (name + '.db')}"
        return
    if dialect == "postgresql":
        import psycopg

        try:
            admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            _unavailable("PostgreSQL", exc)
        with admin:
            admin.execute(f"CREATE DATABASE {name}")
            try:
                yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
            finally:
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        return
    if dialect == "mysql":
        import pymysql

        try:
            admin = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user="root",
                                    connect_timeout=5, autocommit=True)
        except pymysql.err.OperationalError as exc:
            _unavailable("MariaDB", exc)
        try:
            with admin.cursor() as cur:
                cur.execute(f"CREATE DATABASE {name}")
            yield f"mysql://root@{MYSQL_HOST}:{MYSQL_PORT}/{name}"
        finally:
            with admin.cursor() as cur:
                # A connection a failed test left open would hold its tables' metadata
                # locks, and DROP DATABASE would wait for it forever.
                cur.execute("SELECT id FROM information_schema.processlist WHERE db = %s",
                            (name,))
                for (session,) in cur.fetchall():
                    try:
                        cur.execute(f"KILL {int(session)}")
                    except pymysql.err.OperationalError as exc:
                        if exc.args[0] != 1094:  # Unknown thread id: it has just quit
                            raise
                cur.execute(f"DROP DATABASE IF EXISTS {name}")
            admin.close()
        return
    raise ValueError(dialect)


def connect(url: str) -> Any:
    """The application's own DB-API connection to ``url`` (not autocommit)."""
    if url.startswith("sqlite:///"):
        return sqlite3.connect(url[len("sqlite:///"):], timeout=30)
    if url.startswith("postgresql://"):
        import psycopg

        return psycopg.connect(url)
    if url.startswith("mysql://"):
        import pymysql

        host_db = url.split("@", 1)[1]
        hostport, database = host_db.split("/", 1)
        host, port = hostport.split(":")
        return pymysql.connect(host=host, port=int(port), user="root", database=database)
    raise ValueError(url)


def sqlalchemy_url(url: str) -> str:
    """``url`` as SQLAlchemy spells it (with the driver taskwarren's tests use)."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("mysql://"):
        return "mysql+pymysql://" + url.split("://", 1)[1]
    return url


def kill_store_sessions(store_url: str) -> int:
    """End every other session on the store's database, as a server restart or a DBA's
    ``KILL`` would (PostgreSQL and MariaDB); returns how many."""
    conn = connect(store_url)
    try:
        cur = conn.cursor()
        if store_url.startswith("postgresql"):
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                        "datname = current_database() AND pid <> pg_backend_pid() "
                        "AND backend_type = 'client backend'")
            killed = len(cur.fetchall())
        else:
            cur.execute("SELECT id FROM information_schema.processlist WHERE db = DATABASE() "
                        "AND id <> CONNECTION_ID()")
            ids = [row[0] for row in cur.fetchall()]
            for session in ids:
                with contextlib.suppress(Exception):
                    cur.execute(f"KILL {int(session)}")
            killed = len(ids)
        conn.commit()
        return killed
    finally:
        conn.close()

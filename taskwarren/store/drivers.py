"""What the job store needs of each database: its driver, its server version, SQLite's
transactions."""

from __future__ import annotations

import re
import sqlite3

from taskwarren.errors import ConfigurationError


class SQLiteTx:
    """sqlite3 in autocommit mode, with commit/rollback that end an explicit BEGIN."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.raw = conn

    def cursor(self) -> sqlite3.Cursor:
        """A cursor of the connection."""
        return self.raw.cursor()

    def commit(self) -> None:
        """End an open transaction with COMMIT."""
        if self.raw.in_transaction:
            self.raw.execute("COMMIT")

    def rollback(self) -> None:
        """End an open transaction with ROLLBACK."""
        if self.raw.in_transaction:
            self.raw.execute("ROLLBACK")

    def close(self) -> None:
        """Close the connection."""
        self.raw.close()


#: How long the relay's MySQL connection waits on one read or write before giving it up.
IO_TIMEOUT_S = 60


def check_version(version: str) -> None:
    """Refuse a MySQL older than 8.0.1 or a MariaDB older than 10.6 (no ``SKIP LOCKED``).

    Raises:
        ConfigurationError: the server is too old.
    """
    maria = "mariadb" in version.lower()
    if maria and version.startswith("5.5.5-"):
        version = version[len("5.5.5-"):]  # MariaDB's handshake prefix for old clients
    numbers = [int(n) for n in re.findall(r"\d+", version.split("-")[0])[:3]]
    numbers += [0] * (3 - len(numbers))
    if tuple(numbers) < ((10, 6, 0) if maria else (8, 0, 1)):
        raise ConfigurationError(
            f"the job store needs {'MariaDB 10.6' if maria else 'MySQL 8.0.1'} or newer "
            f"(FOR UPDATE SKIP LOCKED); this server is {version[:60]}")


def missing_driver(module: str, extra: str) -> ConfigurationError:
    """The error for a store whose driver is not installed, naming the extra to install."""
    return ConfigurationError(f"the job store needs {module}: pip install 'taskwarren[{extra}]'")


#: PostgreSQL's serialization failure and deadlock; MySQL's deadlock (its transaction is
#: rolled back whole, so it can be run again from the start).
_RACE_SQLSTATES = frozenset({"40001", "40P01"})
_RACE_MYSQL_CODES = frozenset({1213})


def lost_race(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) says the transaction lost a race
    with another (a deadlock, a serialization failure) and was rolled back whole."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if getattr(seen, "sqlstate", None) in _RACE_SQLSTATES:
            return True
        args = getattr(seen, "args", ())
        if args and isinstance(args[0], int) and args[0] in _RACE_MYSQL_CODES:
            return True
        seen = seen.__cause__
    return False

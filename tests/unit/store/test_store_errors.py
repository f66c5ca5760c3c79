"""Store errors: one line, and never the store URL's password in any spelling."""

from __future__ import annotations

import pytest

from taskwarren.store.database import Store


def _store(url: str) -> Store:
    store = object.__new__(Store)  # no connection: only the URL matters here
    store.url = url
    return store


def test_a_driver_message_quoting_the_password_is_scrubbed_in_every_spelling() -> None:
    store = _store("mysql://app:s3cr%2Ft%40x@db:3306/app")
    text = store.scrub("auth failed for s3cr/t@x (raw s3cr%2Ft%40x)\n  retry later")
    assert "s3cr" not in text
    assert text == "auth failed for *** (raw ***) retry later"


def test_a_long_driver_message_is_cut() -> None:
    assert len(_store("postgresql://db/app").scrub("x" * 5000)) == 300


def test_a_password_in_the_query_is_scrubbed_too() -> None:
    text = _store("postgresql://app@db/app?password=hunter%232").scrub("no: hunter#2 hunter%232")
    assert "hunter" not in text


def test_servers_without_skip_locked_are_refused_by_name() -> None:
    from taskwarren.errors import ConfigurationError
    from taskwarren.store.drivers import check_version

    for fine in ("10.11.19-MariaDB-0+deb12u1", "5.5.5-10.11.19-MariaDB-0+deb12u1",
                 "10.6.0-MariaDB", "8.0.36", "8.4.0-log", "9.1.0"):
        check_version(fine)
    for old, needs in (("10.5.22-MariaDB-1", "MariaDB 10.6"), ("5.5.5-10.5.2-MariaDB", "10.6"),
                       ("5.7.44-log", "MySQL 8.0.1"), ("8.0.0", "MySQL 8.0.1")):
        with pytest.raises(ConfigurationError, match=needs):
            check_version(old)

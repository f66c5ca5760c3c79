"""Settings come from TASKWARREN_* only when asked, and a typo is an error."""

from __future__ import annotations

import pytest

from taskwarren.errors import ConfigurationError
from taskwarren.settings import DEFAULT_URL, Settings, mask_url


def test_defaults_use_the_embedded_sqlite_broker() -> None:
    assert Settings.from_env({}).url == DEFAULT_URL


def test_environment_values_are_typed() -> None:
    s = Settings.from_env({"TASKWARREN_URL": "amqp://h/", "TASKWARREN_GRACE_S": "5",
                           "TASKWARREN_QUEUE_TYPE": "classic"})
    assert (s.url, s.grace_s, s.queue_type) == ("amqp://h/", 5.0, "classic")


def test_a_misspelt_setting_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigurationError, match="TASKWARREN_QUEUETYPE"):
        Settings.from_env({"TASKWARREN_QUEUETYPE": "classic"})


def test_a_bad_value_is_an_error_naming_the_setting() -> None:
    with pytest.raises(ConfigurationError, match="queue_type"):
        Settings.from_env({"TASKWARREN_QUEUE_TYPE": "fast"})


@pytest.mark.parametrize(("url", "masked"), [
    ("amqp://user:s3cret@host:5672/vh", "amqp://user:***@host:5672/vh"),
    ("amqp://a:p1@h1/,amqp://a:p2@h2/", "amqp://a:***@h1/,amqp://a:***@h2/"),
    ("amqp://host/", "amqp://host/"),
    ("sqlite:///x.db", "sqlite:///x.db"),
])
def test_passwords_are_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert "s3cret" not in mask_url(url)

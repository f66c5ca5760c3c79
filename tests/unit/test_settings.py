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


#: What Kubernetes injects for the RabbitMQ operator's Service ``taskwarren-rabbitmq``
#: (ports amqp 5672, management 15672, prometheus 15692) and for a Service named
#: plain ``taskwarren``.
_SERVICE_LINKS = {
    "TASKWARREN_RABBITMQ_SERVICE_HOST": "10.96.12.7",
    "TASKWARREN_RABBITMQ_SERVICE_PORT": "5672",
    "TASKWARREN_RABBITMQ_SERVICE_PORT_AMQP": "5672",
    "TASKWARREN_RABBITMQ_SERVICE_PORT_MANAGEMENT": "15672",
    "TASKWARREN_RABBITMQ_SERVICE_PORT_PROMETHEUS": "15692",
    "TASKWARREN_RABBITMQ_PORT": "tcp://10.96.12.7:5672",
    "TASKWARREN_RABBITMQ_PORT_5672_TCP": "tcp://10.96.12.7:5672",
    "TASKWARREN_RABBITMQ_PORT_5672_TCP_PROTO": "tcp",
    "TASKWARREN_RABBITMQ_PORT_5672_TCP_PORT": "5672",
    "TASKWARREN_RABBITMQ_PORT_5672_TCP_ADDR": "10.96.12.7",
    "TASKWARREN_RABBITMQ_PORT_15672_TCP": "tcp://10.96.12.7:15672",
    "TASKWARREN_RABBITMQ_PORT_15672_TCP_PROTO": "tcp",
    "TASKWARREN_RABBITMQ_PORT_15672_TCP_PORT": "15672",
    "TASKWARREN_RABBITMQ_PORT_15672_TCP_ADDR": "10.96.12.7",
    "TASKWARREN_SERVICE_HOST": "fd00:10:96::1f",
    "TASKWARREN_SERVICE_PORT": "9191",
    "TASKWARREN_PORT": "tcp://[fd00:10:96::1f]:9191",
    "TASKWARREN_PORT_9191_TCP": "tcp://[fd00:10:96::1f]:9191",
    "TASKWARREN_PORT_9191_TCP_PROTO": "tcp",
    "TASKWARREN_PORT_9191_TCP_PORT": "9191",
    "TASKWARREN_PORT_9191_TCP_ADDR": "fd00:10:96::1f",
    "TASKWARREN_METRICS_PORT_9_UDP": "udp://10.96.0.9:9",
    "TASKWARREN_METRICS_PORT_9_UDP_PROTO": "udp",
}


def test_kubernetes_service_link_variables_do_not_stop_a_worker() -> None:
    s = Settings.from_env({**_SERVICE_LINKS, "TASKWARREN_PREFETCH": "4"})
    assert s.prefetch == 4
    assert s.url == DEFAULT_URL


def test_a_misspelt_setting_among_service_links_is_still_an_error() -> None:
    with pytest.raises(ConfigurationError, match="TASKWARREN_PREFECH"):
        Settings.from_env({**_SERVICE_LINKS, "TASKWARREN_PREFECH": "4"})


def test_a_misspelt_setting_comes_with_a_suggestion() -> None:
    with pytest.raises(ConfigurationError, match="did you mean TASKWARREN_PREFETCH"):
        Settings.from_env({"TASKWARREN_PREFECH": "4"})


@pytest.mark.parametrize(("name", "value"), [
    # Names shaped like service links, but values Kubernetes never writes there:
    # a user who meant a setting, not a link.
    ("TASKWARREN_BROKER_PORT", "5672"),
    ("TASKWARREN_RABBITMQ_SERVICE_HOST", "rabbit.example.com"),
    ("TASKWARREN_RABBITMQ_SERVICE_PORT", "amqp"),
    ("TASKWARREN_RABBITMQ_PORT_5672_TCP", "tcp://10.0.0.1:5673"),
    ("TASKWARREN_RABBITMQ_PORT_5672_TCP_PROTO", "udp"),
    ("TASKWARREN_RABBITMQ_PORT_5672_TCP_ADDR", "localhost"),
])
def test_a_setting_shaped_like_a_service_link_without_its_value_is_an_error(
    name: str, value: str
) -> None:
    with pytest.raises(ConfigurationError, match=name):
        Settings.from_env({name: value})


def test_the_store_url_is_read_masked_and_checked() -> None:
    settings = Settings.from_env({"TASKWARREN_STORE_URL": "mysql://app:pa%2Fss@db:3306/app",
                                  "TASKWARREN_URL": "amqp://guest:guest@h/%2F"})
    assert settings.effective_store_url == "mysql://app:pa%2Fss@db:3306/app"
    assert "pa%2Fss" not in repr(settings)
    with pytest.raises(ConfigurationError, match="use postgresql://, mysql://") as caught:
        Settings.from_env({"TASKWARREN_STORE_URL": "redis://u:hunter2@h/0"})
    assert "hunter2" not in str(caught.value)


def test_the_embedded_broker_is_its_own_store_and_rabbitmq_has_none_by_default() -> None:
    assert Settings.from_env({"TASKWARREN_URL": "sqlite:///x.db"}).effective_store_url == \
        "sqlite:///x.db"
    assert Settings.from_env({"TASKWARREN_URL": "amqp://h/%2F"}).effective_store_url is None


def test_the_web_token_is_read_never_shown_and_must_be_long_enough() -> None:
    token = "a-long-dashboard-token-42"
    settings = Settings.from_env({"TASKWARREN_WEB_TOKEN": token})

    assert settings.web_token == token
    assert token not in repr(settings) and token not in str(settings)
    with pytest.raises(ConfigurationError, match="at least 16 characters") as caught:
        Settings.from_env({"TASKWARREN_WEB_TOKEN": "shorty"})
    assert "shorty" not in str(caught.value)


def test_the_management_url_is_read_masked_and_must_be_http() -> None:
    url = "http://ops:mgmt-secret@rabbit:15672/"
    settings = Settings.from_env({"TASKWARREN_MANAGEMENT_URL": url})

    assert settings.management_url == url
    assert "mgmt-secret" not in repr(settings)
    with pytest.raises(ConfigurationError, match="http:// or https://") as caught:
        Settings.from_env({"TASKWARREN_MANAGEMENT_URL": "amqp://ops:mgmt-secret@rabbit/"})
    assert "mgmt-secret" not in str(caught.value)

"""Broker URLs are parsed once and strictly, and no message ever shows a password."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from taskwarren.brokers.rabbitmq import parse_urls
from taskwarren.errors import ConfigurationError
from taskwarren.settings import Settings, mask_url

#: Passwords with every character that ends a URL's host part, or is otherwise special.
#: Their fragments ("Zq", "9xK") must never appear in anything shown.
HOSTILE = ["Zq/9xK", "Zq?9xK", "Zq#9xK", "Zq@9xK", "Zq%2F9xK", "Zq%409xK", "Zq:9xK",
           "Zq,9xK", "Zq/9xK@", "/Zq9xK", "Zq9xK?", "Zq9xK#a=b"]


def shown(text: str) -> bool:
    return bool(re.search(r"Zq|9xK", text))


def urls_with(password: str) -> list[str]:
    forgotten = [] if "@" in password else [f"amqp://guest:{password}"]  # no "@host"
    return [
        *forgotten,
        f"amqp://guest:{password}@host/%2F",
        f"amqp://guest:{password}@host:5673/%2F?heartbeat=5",
        f"amqps://guest:{password}@host/",
        f"amqp://guest:{password}@h1/%2F,amqp://guest:{password}@h2/%2F",
        f"amqp://a:b@h1/, amqp://guest:{password}@h2/",
    ]


@pytest.mark.parametrize("password", HOSTILE)
def test_a_masked_url_never_shows_any_part_of_the_password(password: str) -> None:
    for url in urls_with(password):
        assert not shown(mask_url(url)), (url, mask_url(url))


@pytest.mark.parametrize("password", HOSTILE)
def test_a_url_is_either_read_exactly_or_refused_without_showing_the_password(
    password: str,
) -> None:
    for url in urls_with(password):
        try:
            endpoints = parse_urls(url)
        except ConfigurationError as exc:
            assert not shown(str(exc)), (url, str(exc))
            continue
        # Accepted: then every password is read exactly as meant, never a fragment.
        for ep in endpoints:
            assert ep.password in ("b", password.replace("%2F", "/").replace("%40", "@"))
            assert not shown(repr(ep))


@pytest.mark.parametrize("password", ["se/cret", "se?cret", "se#cret"])
def test_an_unencoded_slash_question_mark_or_hash_in_the_password_asks_to_percent_encode(
    password: str,
) -> None:
    with pytest.raises(ConfigurationError, match="percent-encode") as caught:
        Settings.from_env({"TASKWARREN_URL": f"amqp://guest:{password}@host/%2F"})
    assert "cret" not in str(caught.value)
    assert "amqp://guest:***@host/%2F" in str(caught.value)


def test_percent_encoded_and_at_sign_passwords_are_read_exactly() -> None:
    assert parse_urls("amqp://guest:se%2Fcret@host/%2F")[0].password == "se/cret"
    assert parse_urls("amqp://guest:se@cret@host/%2F")[0].password == "se@cret"
    assert parse_urls("amqp://guest:a,b@host/%2F")[0].password == "a,b"
    ep = parse_urls("amqp://us%40er:p%3Aw@[::1]:5673/v%2Fh")[0]
    assert (ep.userid, ep.password, ep.host, ep.port, ep.vhost) == (
        "us@er", "p:w", "::1", 5673, "v/h")


def test_a_cluster_list_gives_one_endpoint_per_url_and_errors_say_which() -> None:
    eps = parse_urls("amqp://a:p1@h1/%2F, amqp://a:p2@h2:5673/%2F")
    assert [(e.host, e.port, e.password) for e in eps] == [("h1", 5672, "p1"),
                                                           ("h2", 5673, "p2")]
    with pytest.raises(ConfigurationError, match="broker URL #2 of 2"):
        parse_urls("amqp://a:p1@h1/%2F,amqp://a:p2@h2/%2F?nope=1")


def test_a_bad_url_is_refused_when_the_settings_are_built() -> None:
    with pytest.raises(ConfigurationError, match="not an AMQP URL"):
        Settings.from_env({}, url="amqp://h/%2F,http://x:Zq9xK@h/")
    base = Settings.from_env({}, url="amqp://h/%2F")
    with pytest.raises(ConfigurationError, match="unknown query parameter"):
        base.replace(url="amqp://h/%2F?heartbeet=2")


def test_query_parameters_of_the_rabbitmq_uri_spec_are_read() -> None:
    ep = parse_urls("amqp://h/%2F?heartbeat=2&connection_timeout=2500&channel_max=64"
                    "&frame_max=8192&auth_mechanism=amqplain&auth_mechanism=plain")[0]
    assert (ep.heartbeat_s, ep.connect_timeout_s, ep.channel_max, ep.frame_max) == (
        2, 2.5, 64, 8192)
    assert ep.auth_mechanisms == ("amqplain", "plain")
    assert ep.tls is None


def test_tls_parameters_are_read_and_the_host_name_is_checked_by_default(
    tmp_path: Path,
) -> None:
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "cert.pem", "key.pem"))
    for f in (ca, cert, key):
        f.write_text("x")
    ep = parse_urls(f"amqps://rabbit.example/%2F?cacertfile={ca}&certfile={cert}"
                    f"&keyfile={key}&verify=verify_peer&server_name_indication=other")[0]
    assert ep.port == 5671 and ep.tls is not None
    assert (ep.tls.cacertfile, ep.tls.certfile, ep.tls.keyfile) == (str(ca), str(cert),
                                                                    str(key))
    assert (ep.tls.verify, ep.tls.server_name) == (True, "other")
    default = parse_urls("amqps://rabbit.example/")[0].tls
    assert default is not None and default.server_name == "rabbit.example"
    off = parse_urls("amqps://rabbit.example/?verify=verify_none")[0].tls
    assert off is not None and (off.verify, off.server_name) == (False, None)


@pytest.mark.parametrize(("url", "says"), [
    ("amqp://h/%2F?heartbeat=soon", "heartbeat must be a whole number"),
    ("amqp://h/%2F?connection_timeout=0", "connection_timeout must be"),
    ("amqp://h/%2F?frame_max=100", "frame_max must be"),
    ("amqp://h/%2F?auth_mechanism=kerberos", "auth_mechanism must be one of"),
    ("amqp://h/%2F?cacertfile=/etc/hostname", "need(s) TLS"),
    ("amqps://h/%2F?cacertfile=/no/such.pem", "is not a file"),
    ("amqps://h/%2F?verify=maybe", "verify must be"),
    ("amqp://h/%2F?fail_if_no_peer_cert=true", "server-side option"),
    ("amqp://h/%2F?heartbeat=1&heartbeat=2", "twice"),
    ("amqp://h/%2F?heartbeat", "malformed query"),
    ("amqp://h/a/b", "one path segment"),
    ("amqp://h:99999/", "port"),
])
def test_a_bad_or_unknown_query_parameter_is_an_error_saying_what(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"TASKWARREN_URL": url})
    assert says in str(caught.value)


def test_settings_show_their_url_masked() -> None:
    settings = Settings.from_env({}, url="amqp://guest:Zq9xK@host/%2F")
    assert settings.url == "amqp://guest:Zq9xK@host/%2F"
    for text in (repr(settings), str(settings)):
        assert "amqp://guest:***@host/%2F" in text and not shown(text)

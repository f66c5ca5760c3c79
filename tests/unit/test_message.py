"""The envelope: clean copies for retries and replays, and failure summaries."""

from __future__ import annotations

from taskwarren.message import H_ATTEMPT, encode, failure_headers, failure_summary, revived


def test_a_retry_copy_carries_none_of_the_brokers_death_headers() -> None:
    env = encode("t", "q", b"{}")
    dead = env.with_headers({"x-death": [{"reason": "expired"}], "x-first-death-reason":
                             "expired", H_ATTEMPT: 1})
    clean = dead.clean()
    assert "x-death" not in clean.headers and "x-first-death-reason" not in clean.headers
    assert clean.headers[H_ATTEMPT] == 1 and clean.message_id == env.message_id


def test_a_replayed_dead_letter_keeps_its_id_and_starts_again_at_attempt_zero() -> None:
    env = encode("t", "q", b"{}", attempt=3)
    dead = env.with_headers(failure_headers("ValueError", "boom", "Traceback ..."))
    again = revived(dead)
    assert again.message_id == env.message_id
    assert again.headers[H_ATTEMPT] == 0
    assert not any(k.startswith("tw-error") for k in again.headers)


def test_the_summary_of_a_broker_dead_lettered_message_says_why() -> None:
    env = encode("t", "q", b"{}").with_headers(
        {"x-death": [{"reason": "delivery_limit", "queue": "q", "count": 1}]})
    kind, text, _ = failure_summary(env)
    assert kind == "DeliveryLimitExceeded" and "x-delivery-limit" in text


def test_the_summary_of_our_dead_letter_is_its_error() -> None:
    env = encode("t", "q", b"{}").with_headers(failure_headers("KeyError", "'x'"))
    assert failure_summary(env)[:2] == ("KeyError", "'x'")

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


def test_a_copy_of_a_message_with_huge_headers_fits_the_header_budget() -> None:
    from taskwarren.message import (
        H_CLIPPED,
        MAX_HEADERS_BYTES,
        encode,
        failure_headers,
        header_bytes,
    )

    envelope = encode("t" * 120_000, "q", b"{}")
    envelope.headers.update({f"x-junk-{i}": "v" * 20 for i in range(5_000)})
    envelope.headers["x-table"] = {f"k{i}": i for i in range(3_000)}
    dead = envelope.with_headers(failure_headers("E", "e" * 50_000, "tb\n" * 50_000,
                                                 "r" * 50_000))
    assert header_bytes(dead.headers) <= MAX_HEADERS_BYTES
    assert dead.headers["tw-task"].startswith("tttt")
    assert "tw-task" in dead.headers[H_CLIPPED] and "x-table" in dead.headers[H_CLIPPED]
    assert dead.headers["tw-reason"].startswith("rrrr")
    small = encode("t", "q", b"{}").with_headers({"tw-reason": "r"})
    assert H_CLIPPED not in small.headers


def test_a_negative_attempt_number_counts_as_the_first_attempt() -> None:
    envelope = encode("t", "q", b"{}").with_headers({H_ATTEMPT: -1_000_000})
    # A producer cannot buy itself an unlimited retry budget with a negative count.
    assert envelope.attempt == 0


def test_a_copy_fits_the_header_budget_even_when_tw_headers_fill_it() -> None:
    from taskwarren.message import H_CLIPPED, H_TRACE, MAX_HEADERS_BYTES, header_bytes

    envelope = encode("t", "q", b"{}")
    # Short text under names that look like ours, and one of ours that is no text.
    envelope.headers.update({f"tw-junk-{i}": "v" * 900 for i in range(150)})
    envelope.headers[H_TRACE] = list(range(20_000))
    dead = envelope.with_headers(failure_headers("E", "boom"))
    assert header_bytes(dead.headers) <= MAX_HEADERS_BYTES
    assert dead.headers["tw-task"] == "t" and dead.headers["tw-error"] == "boom"
    assert "tw-junk-" in dead.headers[H_CLIPPED]
    assert H_TRACE not in dead.headers and H_TRACE in dead.headers[H_CLIPPED]


def test_task_ids_are_random_uuid4_text() -> None:
    import uuid

    from taskwarren.message import new_task_id

    ids = [new_task_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122

"""Delay routing keys: every one of the 28 levels, walked through simulated topic routing."""

from __future__ import annotations

import pytest

from taskwarren.errors import ConfigurationError
from taskwarren.topology import (
    DELAY_DELIVER_EXCHANGE,
    DELAY_LEVELS,
    MAX_DELAY_S,
    check_queue_name,
    delay_entry_exchange,
    delay_exchange,
    delay_from_routing_key,
    delay_routing_key,
    deliver_binding_key,
    level_binding_keys,
    level_ttl_ms,
    next_level_exchange,
    queue_arguments,
)


def topic_match(pattern: str, key: str) -> bool:
    """RabbitMQ topic matching: '*' is exactly one word, '#' zero or more."""
    p, k = pattern.split("."), key.split(".")

    def match(i: int, j: int) -> bool:
        if i == len(p):
            return j == len(k)
        if p[i] == "#":
            return any(match(i + 1, jj) for jj in range(j, len(k) + 1))
        if j == len(k):
            return False
        return (p[i] == "*" or p[i] == k[j]) and match(i + 1, j + 1)

    return match(0, 0)


def route_through_levels(key: str, entry: str | None = None) -> tuple[int, str]:
    """Follow a delayed message from its entry level to the deliver exchange.

    Returns the total time spent waiting (seconds) and where it finally lands.
    """
    exchange, waited = entry or delay_exchange(DELAY_LEVELS - 1), 0
    while exchange != DELAY_DELIVER_EXCHANGE:
        level = int(exchange.rsplit(".", 1)[1])
        wait_key, pass_key = level_binding_keys(level)
        to_queue, to_next = topic_match(wait_key, key), topic_match(pass_key, key)
        assert to_queue != to_next, "exactly one binding of each level matches"
        if to_queue:
            waited += level_ttl_ms(level) // 1000  # then dead-lettered one level down
        exchange = next_level_exchange(level)
    return waited, key


@pytest.mark.parametrize("level", range(DELAY_LEVELS))
def test_a_delay_of_one_bit_waits_exactly_in_that_level(level: int) -> None:
    key = delay_routing_key(2**level, "analysis")
    assert route_through_levels(key)[0] == 2**level
    assert delay_from_routing_key(key) == (2**level, "analysis")


@pytest.mark.parametrize("delay", [1, 2, 3, 59, 60, 61, 3600, 86_399, 7 * 86_400, MAX_DELAY_S])
def test_any_delay_waits_exactly_its_seconds_and_reaches_only_its_queue(delay: int) -> None:
    key = delay_routing_key(delay, "email.ingest")
    waited, final_key = route_through_levels(key)
    assert waited == delay
    assert route_through_levels(key, delay_entry_exchange(delay))[0] == delay, (
        "entering at the highest set bit's level waits just as long")
    assert topic_match(deliver_binding_key("email.ingest"), final_key)
    assert not topic_match(deliver_binding_key("ingest"), final_key)
    assert not topic_match(deliver_binding_key("email"), final_key)


def test_fractional_delays_round_up_never_earlier() -> None:
    assert delay_from_routing_key(delay_routing_key(0.2, "q"))[0] == 1
    assert delay_from_routing_key(delay_routing_key(1.01, "q"))[0] == 2


def test_delays_out_of_range_are_refused() -> None:
    with pytest.raises(ConfigurationError):
        delay_routing_key(-1, "q")
    with pytest.raises(ConfigurationError):
        delay_routing_key(MAX_DELAY_S + 1, "q")


def test_quorum_queues_always_carry_a_delivery_limit_and_a_dead_letter_exchange() -> None:
    args = queue_arguments("q", "quorum", 50)
    assert args["x-delivery-limit"] == 50
    assert args["x-dead-letter-exchange"] == "taskwarren.dlx"
    assert args["x-dead-letter-routing-key"] == "q"
    assert "x-delivery-limit" not in queue_arguments("q", "classic", 50)


@pytest.mark.parametrize("name", ["", "a#b", "a*b", "x.dead", "amq.x", "taskwarren.q", "a..b"])
def test_unusable_queue_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigurationError):
        check_queue_name(name)

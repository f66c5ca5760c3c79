"""py-amqp's errors, and the socket's, reach the rest of the RabbitMQ broker as ours."""

from __future__ import annotations

import pytest
from amqp import exceptions as amqp_errors

from taskwarren.brokers.rabbitmq.errors import (
    AccessRefusedError,
    LinkLostError,
    RefusedError,
    mapped,
)
from taskwarren.errors import BrokerConnectionError, BrokerError, PublishTimeoutError


def raised_through_mapped(exc: BaseException) -> BaseException:
    with pytest.raises(BaseException) as caught, mapped():
        raise exc
    return caught.value


def test_a_refused_declare_becomes_a_refused_error_with_the_brokers_reply() -> None:
    error = raised_through_mapped(amqp_errors.NotFound("NOT_FOUND - no queue 'q'", (50, 10)))
    assert isinstance(error, RefusedError) and isinstance(error, BrokerError)
    assert (error.reply_code, error.reply_text) == (404, "NOT_FOUND - no queue 'q'")
    assert error.channel_only
    assert isinstance(error.__cause__, amqp_errors.NotFound), "the original is kept as cause"


def test_a_broken_socket_or_a_stalled_link_means_the_link_is_lost() -> None:
    for exc in (ConnectionResetError("reset by peer"), TimeoutError("no answer"), EOFError(),
                amqp_errors.ConnectionForced("shutdown"), AttributeError("'NoneType'")):
        error = raised_through_mapped(exc)
        assert isinstance(error, LinkLostError) and isinstance(error, BrokerConnectionError)
        assert not error.cancelled
        assert str(error), "the message never ends up empty"


def test_a_cancelled_consumer_is_a_lost_link_that_says_so() -> None:
    error = raised_through_mapped(amqp_errors.ConsumerCancelled("amq.ctag-1", (60, 30)))
    assert isinstance(error, LinkLostError) and error.cancelled


def test_our_own_errors_and_unrelated_ones_pass_through_unchanged() -> None:
    for exc in (PublishTimeoutError("no confirm"), AccessRefusedError("refused"),
                KeyError("x"), ValueError("bad")):
        assert raised_through_mapped(exc) is exc

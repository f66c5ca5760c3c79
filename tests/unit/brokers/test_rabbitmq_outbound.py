"""The RabbitMQ consumer's own plumbing, without a broker: wake pipe, confirms, connect bounds."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from taskwarren.brokers.rabbitmq import consumer as consumer_module
from taskwarren.brokers.rabbitmq.consumer import RabbitMQConsumer
from taskwarren.brokers.rabbitmq.link import Link
from taskwarren.brokers.rabbitmq.outbound import Outbound
from taskwarren.message import Envelope
from taskwarren.settings import Settings
from taskwarren.urls import Endpoint, parse_urls

URL = "amqp://guest:guest@127.0.0.1:1/%2F"


def _endpoints(settings: Settings) -> list[Endpoint]:
    return parse_urls(settings.url)


def test_a_wakeup_during_close_never_writes_to_a_descriptor_someone_else_now_owns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(url=URL)
    consumer = RabbitMQConsumer(settings, _endpoints(settings))
    real_close = os.close
    strangers: list[int] = []

    def close_then_reuse(fd: int) -> None:
        r, w = os.pipe()
        os.set_blocking(r, False)
        real_close(fd)
        # Another thread opens a file at once and gets the number just freed; then a
        # worker thread wakes the consumer up.
        os.dup2(w, fd)
        real_close(w)
        strangers.extend((r, fd))
        consumer.wakeup()

    monkeypatch.setattr(consumer_module.os, "close", close_then_reuse)
    consumer.close()
    monkeypatch.undo()

    stray = b""
    for r in strangers[0::2]:
        with contextlib.suppress(BlockingIOError):
            stray += os.read(r, 16)
    for fd in strangers:
        os.close(fd)
    assert stray == b"", "a wakeup was written into a file the consumer no longer owns"


class _FakeChannel:
    channel_id = 1

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.events: dict[str, set[Any]] = {"basic_ack": set(), "basic_nack": set(),
                                            "basic_return": set()}
        self.published: list[Any] = []

    def confirm_select(self) -> None:
        pass

    def basic_publish(self, *args: Any, **kwargs: Any) -> None:
        self.published.append(args)


class _FakeConnection:
    """Takes what is written (frames.publish_frames) and what py-amqp would publish."""

    frame_max = 131072
    bytes_sent = 0

    def __init__(self) -> None:
        self.written: list[bytes] = []
        written = self.written
        self.transport = type("Transport", (), {"write": lambda _, data: written.append(data)})()

    def channel(self) -> _FakeChannel:
        return _FakeChannel(self)


def test_reopening_the_channel_fails_the_confirms_still_awaited_on_the_old_one() -> None:
    settings = Settings(url=URL)
    link = Link(settings, _endpoints(settings), heartbeat=False)
    link.conn = _FakeConnection()
    link.open_channel()
    outcomes: list[str | None] = []
    link.publish("ex", "key", Envelope(message_id="m-1", body=b"{}"), outcomes.append)

    link.open_channel()  # the broker closed the channel (a refused declare, say)

    assert len(outcomes) == 1 and outcomes[0] is not None
    assert link.unconfirmed == 0


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield int(server.getsockname()[1])
    finally:
        server.close()


def test_connecting_the_publishing_link_holds_the_io_thread_about_a_second_at_most(
    silent_server: int,
) -> None:
    url = ",".join(f"amqp://guest:guest@127.0.0.1:{silent_server}/%2F" for _ in range(3))
    settings = Settings(url=url, connect_timeout_s=4.0)
    out = Outbound(settings, _endpoints(settings))

    started = time.monotonic()
    assert out.ready() is None
    took = time.monotonic() - started

    assert took < 2.5, f"ready() held the I/O thread for {took:.1f} s"


def test_a_publishing_channel_reopened_without_confirm_mode_is_not_used_again() -> None:
    settings = Settings(url=URL)
    out = Outbound(settings, _endpoints(settings))
    out.link.conn = _FakeConnection()
    out.link.open_channel()
    out.link.channel._confirm_selected = False  # what py-amqp does after a channel error

    assert out.ready() is None
    assert not out.link.connected

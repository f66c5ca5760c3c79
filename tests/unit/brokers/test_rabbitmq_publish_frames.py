"""``basic.publish`` written in one step (frames.publish_frames): byte for byte what
py-amqp writes for the same message, or left to py-amqp; and taken by the real broker."""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from typing import Any

import amqp
import pytest
from amqp.method_framing import frame_writer
from amqp.serialization import dumps

from taskwarren.brokers.rabbitmq.frames import publish_frames


def py_amqp_bytes(channel: int, frame_max: int, exchange: str, routing_key: str,
                  mandatory: bool, properties: dict[str, Any], body: bytes) -> bytes:
    """What py-amqp's own frame writer writes for this publish."""
    written: list[bytes] = []
    transport = type("Transport", (), {"write": lambda self, data: written.append(bytes(data))})()
    conn = type("Conn", (), {"frame_max": frame_max, "bytes_sent": 0})()
    write_frame = frame_writer(conn, transport)
    args = dumps("Bssbb", (0, exchange, routing_key, mandatory, False))
    write_frame(1, channel, (60, 40), args, amqp.Message(body, **properties))
    return b"".join(written)


def random_value(rnd: random.Random) -> Any:
    makers: list[Callable[[], Any]] = [
        lambda: "".join(rnd.choice(string.printable + "\u00e9\u20ac")
                        for _ in range(rnd.randrange(20))),
        lambda: rnd.random() < 0.5,
        lambda: rnd.choice([0, 1, -1, 2**31 - 1, -(2**31) + 1, -(2**31), 2**31, 2**40,
                            -(2**63), 2**63 - 1]),
        lambda: rnd.uniform(-1e9, 1e9),
        lambda: None,
        lambda: "x" * rnd.randrange(300),
    ]
    return rnd.choice(makers)()


def test_every_message_is_written_as_py_amqp_writes_it() -> None:
    rnd = random.Random(11)
    for n in range(2000):
        props: dict[str, Any] = {}
        if rnd.random() < 0.9:
            props["content_type"] = rnd.choice(["application/json", ""])
        if rnd.random() < 0.9:
            props["application_headers"] = {
                f"k{j}" + rnd.choice(["", "\u00e9"]): random_value(rnd)
                for j in range(rnd.randrange(6))}
        if rnd.random() < 0.9:
            props["delivery_mode"] = rnd.choice([1, 2])
        if rnd.random() < 0.9:
            props["message_id"] = f"id-{n}"
        if rnd.random() < 0.5:
            props["timestamp"] = rnd.randrange(2**40)
        if rnd.random() < 0.5:
            props["app_id"] = "taskwarren"
        body = rnd.randbytes(rnd.choice([0, 5, 100, 5000, 20000]))  # past frame_max too
        frame_max = rnd.choice([4096, 131072])
        call = (rnd.randrange(1, 5), frame_max, rnd.choice(["", "taskwarren"]), f"q{n}",
                rnd.random() < 0.5, props, body)

        assert publish_frames(*call) == py_amqp_bytes(*call), (n, props)


@pytest.mark.parametrize("properties", [
    {"priority": 5},  # a property not written here
    {"application_headers": {"nested": {"a": 1}}},
    {"application_headers": {"when": [1, 2]}},
    {"application_headers": {"huge": 2**70}},
    {"message_id": "x" * 256},  # too long for a short string: py-amqp refuses it
], ids=["property", "table", "array", "int", "long id"])
def test_anything_else_is_left_to_py_amqp(properties: dict[str, Any]) -> None:
    assert publish_frames(1, 131072, "", "q", True, properties, b"{}") is None


def test_the_broker_takes_what_is_written_here(rabbit_url: str, queue: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Published through the app (this writer) and read back with plain py-amqp."""
    from taskwarren import Warren
    from taskwarren.brokers.rabbitmq import link as link_module
    from tests.support.rabbit import connection

    written: list[bool] = []

    def counting(*args: Any) -> bytes | None:
        frames = publish_frames(*args)
        written.append(frames is not None)
        return frames

    monkeypatch.setattr(link_module, "publish_frames", counting)
    app = Warren(url=rabbit_url, queue_type="classic")

    @app.task(queue=queue, name="publish_frames.echo")
    def echo(text: str, n: int = 0) -> None:
        """Never runs: the test reads the queue itself."""

    try:
        task_id = echo.send("caf\u00e9 " * 40_000, n=2**40)  # several body frames
    finally:
        app.close()
    with connection(rabbit_url) as conn:
        msg = conn.channel().basic_get(queue, no_ack=True)
    assert msg is not None
    assert written and all(written), "the task was not written by publish_frames"
    assert msg.properties["message_id"] == task_id
    assert msg.properties["application_headers"]["tw-task"] == "publish_frames.echo"
    assert msg.properties["delivery_mode"] == 2
    assert b'"n":1099511627776' in msg.body and msg.body.count("caf\u00e9".encode()) == 40_000

"""Content headers py-amqp cannot decode become readable deliveries saying why."""

from __future__ import annotations

import struct
from typing import Any

from taskwarren.brokers.rabbitmq import H_UNREADABLE, tolerant_frames


def _short(data: bytes) -> bytes:
    return bytes([len(data)]) + data


def _table(*entries: bytes) -> bytes:
    data = b"".join(entries)
    return struct.pack(">I", len(data)) + data


class _Connection:
    bytes_recv = 0


def deliver(properties: bytes, body: bytes = b"{}") -> Any:
    """Feed one basic.deliver (method, header, body frames); the message py-amqp builds."""
    got: list[Any] = []
    on_frame = tolerant_frames(_Connection(), lambda _ch, _sig, _args, msg: got.append(msg))
    on_frame((1, 1, struct.pack(">HH", 60, 60)))
    on_frame((2, 1, struct.pack(">HHQ", 60, 0, len(body)) + properties))
    on_frame((3, 1, body))
    (msg,) = got
    return msg


FAR_FUTURE = _short(b"sent-at") + b"T" + struct.pack(">Q", 2**40)  # year 36812


def test_a_header_timestamp_beyond_year_9999_is_replaced_by_the_reason_and_the_rest_kept(
) -> None:
    flags = 0x8000 | 0x2000 | 0x0080  # content type, headers, message id
    props = (struct.pack(">H", flags) + _short(b"application/json")
             + _table(_short(b"tw-task") + b"S" + struct.pack(">I", 1) + b"t", FAR_FUTURE)
             + _short(b"id-1"))

    msg = deliver(props, b'{"n": 1}')

    assert msg.body == b'{"n": 1}'
    assert msg.properties["message_id"] == "id-1"
    assert msg.properties["content_type"] == "application/json"
    (why,) = msg.properties["application_headers"].values()
    assert list(msg.properties["application_headers"]) == [H_UNREADABLE]
    assert "year" in why


def test_properties_that_cannot_be_read_at_all_leave_only_the_reason() -> None:
    flags = 0x2000 | 0x0080  # headers, and a message id that is not UTF-8
    props = struct.pack(">H", flags) + _table(FAR_FUTURE) + _short(b"\xff\xfe")

    msg = deliver(props)

    assert list(msg.properties) == ["application_headers"]
    assert H_UNREADABLE in msg.properties["application_headers"]


def test_a_readable_header_is_left_alone() -> None:
    props = struct.pack(">H", 0x0080) + _short(b"id-2")

    assert deliver(props).properties == {"message_id": "id-2"}


def test_an_unreadable_header_sent_by_a_producer_is_dropped_and_the_rest_kept() -> None:
    forged = _short(H_UNREADABLE.encode()) + b"S" + struct.pack(">I", 6) + b"forged"
    task = _short(b"tw-task") + b"S" + struct.pack(">I", 1) + b"t"
    msg = deliver(struct.pack(">H", 0x2000) + _table(task, forged))

    assert msg.properties["application_headers"] == {"tw-task": "t"}

"""Dead letters: browsing them in place, replaying or purging them in confirmed batches.

A dead letter is removed only after its copy (replayed, or refreshed in place) is
confirmed: an interruption leaves a message in both places, never in neither. These
functions run on a link the broker holds (and has locked) for them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from taskwarren.brokers.rabbitmq.errors import LinkLostError, RefusedError, mapped
from taskwarren.brokers.rabbitmq.frames import corked
from taskwarren.brokers.rabbitmq.inbound import envelope_of
from taskwarren.brokers.rabbitmq.link import Link
from taskwarren.brokers.rabbitmq.publisher import publish_copies
from taskwarren.brokers.rabbitmq.topology import declare_queues
from taskwarren.errors import BrokerConnectionError, BrokerError
from taskwarren.message import Envelope, revived
from taskwarren.topology import EXCHANGE, dead_queue

#: Largest prefetch AMQP can express (a 16-bit field).
MAX_PREFETCH = 65535
#: Longest wait for dead letters given back to be counted again after a browse.
DLQ_SETTLE_S = 5.0
#: A dead letter handed back this often is replaced by a fresh copy when browsed:
#: well below RabbitMQ 4.x's default delivery limit of 20, which a dead-letter queue
#: declared by an earlier taskwarren has (newer ones have an explicit, unreachable limit).
DLQ_REFRESH_COUNT = 10
#: Dead letters replayed or purged per confirmed batch (bounds memory and the work an
#: interruption can leave half done).
DEAD_BATCH = 500


def collect(link: Link, queue: str, sink: Callable[[Envelope], None],
            limit: int | None = None) -> None:
    """Give every dead letter of ``queue`` (or the first ``limit``: no more are read) to
    ``sink``, leaving them there (refreshing the well-worn ones: see
    :data:`DLQ_REFRESH_COUNT`)."""
    ch, count, got = _read_dead(link, queue, limit)
    try:
        worn = []
        for msg in got:
            envelope = envelope_of(msg)
            sink(envelope)
            if _handed_back(envelope) >= DLQ_REFRESH_COUNT:
                worn.append(msg)
        for start in range(0, len(worn), DEAD_BATCH):
            batch = worn[start:start + DEAD_BATCH]
            _move_dead(link, ch, queue, batch, [_refreshed(queue, m) for m in batch])
        if worn:
            _acks_applied(ch, queue)
    finally:
        ch.close()
    _await_dead_count(link, queue, count)

def _read_dead(link: Link, queue: str, limit: int | None = None) -> tuple[Any, int, list[Any]]:
    """A side channel holding the dead letters of ``queue`` (all, or the first ``limit``)
    unacked, and how many there are."""
    dead = dead_queue(queue)
    ch = link.conn.channel()
    _, count, _ = ch.queue_declare(dead, passive=True)
    got: list[Any] = []
    wanted = count if limit is None else min(count, limit)
    if not wanted:
        return ch, count, got
    # An explicit prefetch: quorum queues cap an unlimited one (at 2000 here). It also
    # keeps the broker from delivering more than ``wanted``.
    ch.basic_qos(0, min(wanted, MAX_PREFETCH), False)
    tag = ch.basic_consume(dead, callback=got.append, no_ack=False)
    while len(got) < min(wanted, MAX_PREFETCH):
        if not link.drain(2.0):
            break
    ch.basic_cancel(tag)
    while len(got) < wanted:  # beyond what a prefetch can hold: one at a time
        msg = ch.basic_get(dead, no_ack=False)
        if msg is None:
            break
        got.append(msg)
    return ch, count, got

def _move_dead(link: Link, side: Any, queue: str, taken: Sequence[Any],
               copies: Sequence[tuple[str, str, Envelope]]) -> None:
    """Publish ``copies`` confirmed, then ack ``taken`` (held on ``side``) for good."""
    if copies:
        deadline = time.monotonic() + link.settings.publish_timeout_s
        publish_copies(link, copies, deadline)
    with corked(link.conn):
        for msg in taken:
            side.basic_ack(msg.delivery_info["delivery_tag"])

def _await_dead_count(link: Link, queue: str, expected: int) -> None:
    """Wait until the dead letters given back are counted again.

    A quorum queue takes back the messages of a closed channel asynchronously; without
    this, a ``dlq list`` right after another would briefly see an empty queue.
    """
    if not link.connected:
        return
    ch = link.conn.channel()
    deadline = time.monotonic() + DLQ_SETTLE_S
    try:
        while ch.queue_declare(dead_queue(queue), passive=True)[1] < expected:
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
    finally:
        ch.close()

def take(link: Link, queue: str, message_ids: Sequence[str] | None, replay: bool) -> int:
    """Replay or purge dead letters, :data:`DEAD_BATCH` at a time.

    Each batch's copies are confirmed, then its dead letters acked (and the acks
    known done) before the next batch is read: memory stays bounded, each batch has
    its own deadline, and a rerun after an interruption finds only what is left.
    """
    wanted = set(message_ids) if message_ids is not None else None
    taken = total = 0
    side: Any = None
    try:
        with mapped():
            declare_queues(link, [queue])
            side = link.conn.channel()
            total = side.queue_declare(dead_queue(queue), passive=True)[1]
            for batch in _stream_dead(link, side, queue, total, wanted):
                done: list[Any] = []
                copies: list[tuple[str, str, Envelope]] = []
                for msg, chosen in batch:
                    done.append(msg)
                    if not chosen:
                        copies.append(_refreshed(queue, msg))
                    elif replay:
                        copies.append((EXCHANGE, queue, revived(envelope_of(msg))))
                _move_dead(link, side, queue, done, copies)
                taken += sum(1 for _, chosen in batch if chosen)
            side, held = None, side
            held.close()  # hands back the dead letters not chosen
    except LinkLostError as exc:
        link.drop()
        verb = "replayed" if replay else "purged"
        raise BrokerConnectionError(
            f"the link broke after {taken} dead letter(s) of {queue!r} were {verb} "
            f"(they are gone from {dead_queue(queue)!r}); run the command again for "
            f"the rest: {exc}"
        ) from None
    except RefusedError as exc:
        link.drop()
        raise BrokerError(f"broker refused: {exc}") from None
    finally:
        if side is not None and link.connected:
            with contextlib.suppress(BrokerError), mapped():
                side.close()
    with mapped():
        _await_dead_count(link, queue, total - taken)
    return taken

def _stream_dead(link: Link, side: Any, queue: str, total: int,
                 wanted: set[str] | None) -> Iterator[list[tuple[Any, bool]]]:
    """Batches of ``(dead letter, chosen)`` read from ``queue``'s dead-letter queue.

    Everything, through a consumer whose prefetch is one batch (the next batch flows
    once this one is acked); or, for chosen ids, one message at a time, holding the
    others unacked until the side channel closes. Not chosen but handed back often
    (see :data:`DLQ_REFRESH_COUNT`) comes too, to be refreshed. At most ``total``
    (the count at the start): dead letters that arrive meanwhile wait for next time.
    """
    dead = dead_queue(queue)
    if wanted is None:
        got: list[Any] = []
        side.basic_qos(0, DEAD_BATCH, False)
        left = total
        while left > 0:
            tag = side.basic_consume(dead, callback=got.append, no_ack=False)
            while len(got) < min(DEAD_BATCH, left):
                if not link.drain(2.0):
                    break
            if not got:
                side.basic_cancel(tag)
                return
            batch = got[:DEAD_BATCH][:left]
            del got[:len(batch)]
            left -= len(batch)
            yield [(msg, True) for msg in batch]
            # The caller has acked the batch: the cancel is answered only once the
            # queue applied those acks (see _acks_applied). Messages delivered
            # meanwhile stay in ``got``, held on this channel, for the next round.
            side.basic_cancel(tag)
        return
    remaining = set(wanted)
    chunk: list[tuple[Any, bool]] = []
    unapplied = False  # acks sent since the last synchronous call on the queue
    for _ in range(total):
        if not remaining:
            break
        msg = side.basic_get(dead, no_ack=False)
        unapplied = False
        if msg is None:
            break
        message_id = msg.properties.get("message_id")
        chosen = message_id in remaining
        remaining.discard(message_id)
        if chosen or _handed_back(envelope_of(msg)) >= DLQ_REFRESH_COUNT:
            chunk.append((msg, chosen))
        if len(chunk) >= DEAD_BATCH:
            yield chunk  # acked by the caller; the next basic.get waits for that
            chunk, unapplied = [], True
    if chunk:
        yield chunk
        unapplied = True
    # A full batch may be the last one (its last id found): no basic.get follows it, so
    # wait here, or the side channel closes before the queue applied those acks.
    if unapplied:
        _acks_applied(side, queue)


def _acks_applied(side: Any, queue: str) -> None:
    """Return once the acks sent on ``side`` are applied by ``queue``'s dead-letter queue.

    basic.ack has no answer, and RabbitMQ 4.0 drops acks a quorum queue has not applied
    yet when their channel closes: seen here, 167 of 200 acked dead letters came back.
    A synchronous call on the same queue is answered after them. basic.get may take one
    more message: it stays unacked and goes back with the channel.
    """
    side.basic_get(dead_queue(queue), no_ack=False)


def _handed_back(envelope: Envelope) -> int:
    """How often the broker says a message was handed back (quorum queues count)."""
    count = envelope.headers.get("x-delivery-count", 0)
    return count if isinstance(count, int) and not isinstance(count, bool) else 0


def _refreshed(queue: str, msg: Any) -> tuple[str, str, Envelope]:
    """A fresh copy of a dead letter of ``queue``, straight back into its dead-letter queue.

    The copy starts with no deliveries counted; its ``x-death`` history stays.
    """
    envelope = envelope_of(msg)
    headers = {k: v for k, v in envelope.headers.items() if k != "x-delivery-count"}
    return "", dead_queue(queue), dataclasses.replace(envelope, headers=headers)

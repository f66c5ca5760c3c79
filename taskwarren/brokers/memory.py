"""An in-process broker for unit tests: same contract, no durability, no network."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from taskwarren.brokers._local import Holdings, check_delay, dead_past_limit, hold_s, subscribers
from taskwarren.brokers.base import (
    Ack,
    Action,
    Also,
    Broker,
    Consumer,
    Delivery,
    QueueStats,
    Republish,
    Requeue,
)
from taskwarren.message import Envelope, revived


@dataclass
class _Queue:
    ready: deque[tuple[Envelope, int]] = field(default_factory=deque)
    dead: list[Envelope] = field(default_factory=list)
    unacked: int = 0
    consumers: int = 0


class MemoryBroker(Broker):
    """Queues in a dict, guarded by one condition variable.

    Args:
        delivery_limit: a message delivered more than this many times is dead-lettered
            (as a quorum queue does).
    """

    location = "memory://"

    def __init__(self, delivery_limit: int = 50) -> None:
        self.delivery_limit = delivery_limit
        self._cond = threading.Condition()
        self._queues: dict[str, _Queue] = {}
        self._delayed: list[tuple[float, int, str, Envelope]] = []
        self._seq = itertools.count()
        self._bindings: dict[str, set[str]] = {}
        self._broadcast_queues: set[str] = set()
        self._presence: dict[int, dict[str, Any]] = {}

    def _queue(self, name: str) -> _Queue:
        q = self._queues.get(name)
        if q is None:
            q = self._queues[name] = _Queue()
        return q

    def declare(self, queues: Iterable[str]) -> None:
        with self._cond:
            for name in queues:
                self._queue(name)

    def publish(self, queue: str, envelopes: Sequence[Envelope], delay_s: float = 0.0) -> None:
        check_delay(delay_s)
        with self._cond:
            self._put(queue, envelopes, delay_s)
            self._cond.notify_all()

    def _put(self, queue: str, envelopes: Iterable[Envelope], delay_s: float) -> None:
        if delay_s > 0:
            due = time.monotonic() + hold_s(delay_s)
            for env in envelopes:
                heapq.heappush(self._delayed, (due, next(self._seq), queue, env))
        else:
            self._queue(queue).ready.extend((env, 0) for env in envelopes)

    def _release_due(self) -> float | None:
        """Move due delayed messages to their queues; seconds until the next is due."""
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, queue, env = heapq.heappop(self._delayed)
            self._queue(queue).ready.append((env, 0))
        return self._delayed[0][0] - now if self._delayed else None

    def release_delayed(self) -> int:
        """Make every delayed message (a retry's backoff, ``delay=``) ready now; how many.

        Tests skip the clock with it: :meth:`taskwarren.testing.InMemory.run`.
        """
        with self._cond:
            released, self._delayed = self._delayed, []
            for _, _, queue, env in sorted(released):
                self._queue(queue).ready.append((env, 0))
            self._cond.notify_all()
            return len(released)

    def consumer(self) -> MemoryConsumer:
        return MemoryConsumer(self)

    def bind_events(self, queue: str, patterns: Sequence[str]) -> None:
        with self._cond:
            self._queue(queue)
            self._bindings.setdefault(queue, set()).update(patterns)

    def publish_event(self, routing_key: str, envelope: Envelope) -> int:
        """Put a copy in every queue with a matching subscription; returns how many."""
        with self._cond:
            bindings = ((q, p) for q, patterns in self._bindings.items() for p in patterns)
            targets = subscribers(bindings, routing_key)
            for queue in targets:
                self._queue(queue).ready.append((envelope, 0))
            self._cond.notify_all()
            return len(targets)

    def presence(self, listen_s: float) -> list[dict[str, Any]]:
        """What open consumers last announced."""
        with self._cond:
            return list(self._presence.values())

    def publish_broadcast(self, envelope: Envelope) -> int:
        """Put a copy in every consumer's broadcast queue; returns how many."""
        with self._cond:
            for queue in self._broadcast_queues:
                self._queue(queue).ready.append((envelope, 0))
            self._cond.notify_all()
            return len(self._broadcast_queues)

    def stats(self, queue: str) -> QueueStats:
        with self._cond:
            self._release_due()
            q = self._queue(queue)
            delayed = sum(1 for item in self._delayed if item[2] == queue)
            return QueueStats(queue, len(q.ready), q.unacked, q.consumers, len(q.dead), delayed)

    def purge(self, queue: str) -> int:
        with self._cond:
            q = self._queue(queue)
            n = len(q.ready)
            q.ready.clear()
            return n

    def dead_letters(self, queue: str, limit: int | None = None) -> list[Envelope]:
        with self._cond:
            return list(self._queue(queue).dead[:limit])

    def replay_dead(self, queue: str, message_ids: Sequence[str] | None) -> int:
        with self._cond:
            q = self._queue(queue)
            chosen = [e for e in q.dead if message_ids is None or e.message_id in message_ids]
            self._put(queue, [revived(e) for e in chosen], 0)
            q.dead = [e for e in q.dead if e not in chosen]
            self._cond.notify_all()
            return len(chosen)

    def purge_dead(self, queue: str, message_ids: Sequence[str] | None) -> int:
        with self._cond:
            q = self._queue(queue)
            kept = [
                e for e in q.dead if message_ids is not None and e.message_id not in message_ids
            ]
            n = len(q.dead) - len(kept)
            q.dead = kept
            return n

    def close(self) -> None:
        """Nothing to release."""


class MemoryConsumer(Consumer):
    """A consumer of a :class:`MemoryBroker`."""

    polls_from_any_thread = True

    def __init__(self, broker: MemoryBroker) -> None:
        self._broker = broker
        # What each held delivery is: its envelope and how often it was delivered before.
        self._held: Holdings[tuple[Envelope, int]] = Holdings()
        self._woken = False
        self._closed = False

    def subscribe(self, queue: str, patterns: Sequence[str]) -> None:
        self._broker.bind_events(queue, patterns)

    def announce(self, info: dict[str, Any]) -> None:
        with self._broker._cond:
            if not self._closed:
                self._broker._presence[id(self)] = dict(info)

    def consume_broadcast(self, prefetch: int) -> None:
        broker = self._broker
        held = self._held
        with broker._cond:
            if not held.broadcast_queue:
                held.broadcast_queue = f"amq.gen-{next(broker._seq)}"
                broker._broadcast_queues.add(held.broadcast_queue)
            held.prefetch[held.broadcast_queue] = prefetch

    def consume(self, queue: str, prefetch: int, timeout_s: float | None = None) -> None:
        with self._broker._cond:
            if queue not in self._held.prefetch:
                self._broker._queue(queue).consumers += 1
            self._held.prefetch[queue] = prefetch

    def poll(self, timeout_s: float) -> list[Delivery]:
        broker = self._broker
        deadline = time.monotonic() + timeout_s
        with broker._cond:
            while True:
                next_due = broker._release_due()
                out = self._take()
                if out or self._woken or self._closed:
                    self._woken = False
                    return out
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return out
                broker._cond.wait(min(remaining, next_due) if next_due is not None else remaining)

    def _take(self) -> list[Delivery]:
        out = []
        limit = self._broker.delivery_limit
        for queue, room in self._held.room().items():
            q = self._broker._queue(queue)
            while q.ready and room > 0:
                env, count = q.ready.popleft()
                dead = dead_past_limit(env, queue, count, limit)
                if dead is not None:
                    q.dead.append(dead)
                    continue
                out.append(self._held.deliver(queue, env, count, (env, count)))
                q.unacked += 1
                room -= 1
        return out

    def settle(self, delivery: Delivery, action: Action) -> None:
        broker = self._broker
        with broker._cond:
            held = self._held.pop(delivery.tag)
            if held is None:
                return
            queue, (env, count) = held
            q = broker._queue(queue)
            q.unacked -= 1
            if isinstance(action, Also):
                for target, envelope in action.publishes:
                    broker._put(target, [envelope], 0.0)
                action = action.action
            if isinstance(action, Requeue):
                q.ready.appendleft((env, count + 1))
            elif isinstance(action, Republish):
                if action.dead:
                    broker._queue(action.queue).dead.append(action.envelope)
                else:
                    broker._put(action.queue, [action.envelope], action.delay_s)
            else:
                assert isinstance(action, Ack)
            self._woken = True
            broker._cond.notify_all()

    def wakeup(self) -> None:
        with self._broker._cond:
            self._woken = True
            self._broker._cond.notify_all()

    def pending(self) -> int:
        return 0

    def cancel(self) -> None:
        with self._broker._cond:
            for queue in self._held.prefetch:
                if queue != self._held.broadcast_queue:
                    self._broker._queue(queue).consumers -= 1
            self._held.prefetch.clear()

    def close(self) -> None:
        broker = self._broker
        with broker._cond:
            self.cancel()
            for queue, (env, count) in self._held.pop_all():
                q = broker._queue(queue)
                q.unacked -= 1
                q.ready.appendleft((env, count + 1))
            broadcast_queue = self._held.broadcast_queue
            if broadcast_queue:  # exclusive and auto-delete: gone with its consumer
                broker._broadcast_queues.discard(broadcast_queue)
                broker._queues.pop(broadcast_queue, None)
            self._closed = True
            broker._presence.pop(id(self), None)
            broker._cond.notify_all()

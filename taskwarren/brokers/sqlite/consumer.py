"""The SQLite consumer: leases rows to one worker process's I/O thread, one round at a time.

A round (:meth:`SQLiteConsumer.poll`) extends this consumer's leases, carries out the
settlements queued since, reclaims leases that ran out or whose owner died, and takes
new rows, all in one write transaction; it asks for the write lock only when there is
work. Between rounds the consumer sleeps on its wake-up socket and settle pipe.
"""

from __future__ import annotations

import json
import math
import select
import sqlite3
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import structlog

from taskwarren.brokers._local import Holdings
from taskwarren.brokers._settle import SettleQueue
from taskwarren.brokers.base import Ack, Action, Also, Consumer, Delivery, Republish, Requeue
from taskwarren.brokers.sqlite import store
from taskwarren.brokers.sqlite.owners import HOUSEKEEPING_S, LeaseWatch, inherit, new_owner, track
from taskwarren.brokers.sqlite.store import BROADCAST_PREFIX, mapped, patient, transaction
from taskwarren.brokers.sqlite.wakeup import Listener
from taskwarren.errors import BrokerError
from taskwarren.message import MAX_ECHO_CHARS, clip

if TYPE_CHECKING:
    from collections.abc import Sequence

    from taskwarren.brokers.sqlite.broker import SQLiteBroker

log = structlog.get_logger("taskwarren.sqlite")

#: A consumer's connection waits this share of the lease for the write lock, then fails the
#: round and tries again: its I/O thread never sits in SQLite's busy handler for a lease.
CONSUMER_BUSY_SHARE = 0.2
#: Seconds of failing polls after which a consumer gives up and raises.
GIVE_UP_S = 60.0
#: Shortest interval between two stored announcements of one consumer.
PRESENCE_WRITE_S = 5.0


class SQLiteConsumer(Consumer):
    """Leases messages of some queues to one worker process's I/O thread.

    Settlements queued from any thread are carried out by the next :meth:`poll`, all in
    one transaction together with the next batch of deliveries.
    """

    polls_from_any_thread = True

    def __init__(self, broker: SQLiteBroker) -> None:
        self._broker = broker
        self.owner = new_owner()
        self._busy_timeout_s = broker.lease_s * CONSUMER_BUSY_SHARE
        with mapped(f"cannot open {broker.path}"):
            self._conn: sqlite3.Connection | None = store.connect(
                broker.path, self._busy_timeout_s)
        # What each held delivery is: its row's seq and message id.
        self._held: Holdings[tuple[int, str]] = Holdings()
        self._settle_q = SettleQueue()
        self._listener = Listener(broker.waker.directory, self.owner)
        self._poller = select.poll()
        self._poller.register(self._settle_q.fileno, select.POLLIN)
        self._leases = LeaseWatch(self.owner, broker.lease_s, self._busy_timeout_s)
        self._woken = False
        self._closed = False
        self._look = True  # something may be ready: query before sleeping
        self._next_due: float | None = None  # wall-clock time a delayed message is due
        self._next_housekeeping = 0.0
        self._extend_at = math.inf
        self._failing_since: float | None = None
        self._announced_at = -math.inf
        track(self)

    def _forsake(self) -> None:
        """In a forked child: keep the parent's connection untouched, drop its socket."""
        inherit(self._conn)
        self._conn = None
        self._listener.forsake()
        self._closed = True

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise BrokerError("this consumer is closed (or belongs to the parent process)")
        return self._conn

    # -- the contract -------------------------------------------------------------------

    def subscribe(self, queue: str, patterns: Sequence[str]) -> None:
        self._broker.bind_events(queue, patterns)

    def announce(self, info: dict[str, Any]) -> None:
        # Stored, not sent: written at most every PRESENCE_WRITE_S so an idle pool does
        # not commit (and fsync) every second; readers check the owner is alive.
        now = time.monotonic()
        if now < self._announced_at + PRESENCE_WRITE_S:
            return
        self._announced_at = now
        conn = self._db()
        try:
            with transaction(conn):
                conn.execute("INSERT OR REPLACE INTO presence (owner, info, seen_at) "
                             "VALUES (?, ?, ?)", (self.owner, json.dumps(info), time.time()))
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise BrokerError(f"cannot announce: {exc}") from None
            # Another writer holds the lock: this announcement is skipped, not an error.
        except sqlite3.Error as exc:
            raise BrokerError(f"cannot announce: {exc}") from None

    def consume_broadcast(self, prefetch: int) -> None:
        # A queue of this consumer's own: deleted with it, or when its owner is found dead.
        self._held.broadcast_queue = BROADCAST_PREFIX + self.owner
        self.consume(self._held.broadcast_queue, prefetch)

    def consume(self, queue: str, prefetch: int, timeout_s: float | None = None) -> None:
        conn = self._db()
        # First: a registration without a socket would look dead.
        fd = self._listener.bind(looks_every_s=HOUSEKEEPING_S)
        if fd is not None:
            self._poller.register(fd, select.POLLIN)
        if queue not in self._held.prefetch:
            with (mapped(f"cannot consume {queue!r}"), patient(conn, self._busy_timeout_s),
                  transaction(conn)):
                conn.execute("INSERT OR IGNORE INTO consumers (owner, queue) VALUES (?, ?)",
                             (self.owner, queue))
        self._held.prefetch[queue] = prefetch
        self._look = True

    def poll(self, timeout_s: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout_s
        while not self._closed:
            try:
                out = self._work()
                self._failing_since = None
            except sqlite3.Error as exc:
                out = self._trouble(exc)
            if out or self._woken:
                self._woken = False
                return out
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._sleep(remaining)
        return []

    def settle(self, delivery: Delivery, action: Action) -> None:
        self._settle_q.put(delivery, action)

    def wakeup(self) -> None:
        self._settle_q.wakeup()

    def pending(self) -> int:
        return len(self._settle_q)

    def cancel(self) -> None:
        queues, self._held.prefetch = list(self._held.prefetch), {}
        if not queues or self._conn is None:
            return
        conn = self._conn
        with mapped("cancel failed"), patient(conn, self._busy_timeout_s), transaction(conn):
            conn.execute("DELETE FROM consumers WHERE owner = ?", (self.owner,))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._held.prefetch = {}
        conn = self._conn
        try:
            if conn is not None:
                todo = self._settle_q.take()
                with transaction(conn):
                    _, woke = self._apply(conn, todo)
                    store.forget_owner(conn, self.owner)
                    woke |= store.release(conn, "owner = ?", (self.owner,),
                                          self._broker.delivery_limit)
                self._held.pop_all()
                self._broker.waker.notify(woke)
        except sqlite3.Error as exc:
            log.warning("consumer.close_failed", error=str(exc), owner=self.owner,
                        held=len(self._held))  # their leases run out instead
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._listener.close()
            self._settle_q.close()

    # -- one round of work --------------------------------------------------------------

    def _work(self) -> list[Delivery]:
        """Extend, settle, reclaim and take, all in one transaction; the new deliveries."""
        conn = self._db()
        now_m, now = time.monotonic(), time.time()
        if self._next_due is not None and now >= self._next_due:
            self._look, self._next_due = True, None
        expired = False  # other owners hold leases: watch them under the write lock
        orphans: list[str] = []
        if now_m >= self._next_housekeeping:
            self._next_housekeeping = now_m + HOUSEKEEPING_S
            expired, orphans = self._leases.inspect(conn, now_m, self._broker.waker.directory)
            self._look = True  # also covers a wake-up datagram that got lost
        todo = self._settle_q.take()
        # Settling frees room under the prefetch for this same round's take.
        freed = Counter(held[0] for held in map(self._held.get, (d.tag for d, _ in todo))
                        if held is not None)
        if freed:
            self._look = True
        room = self._held.room(freed)
        extend = bool(self._held) and now_m >= self._extend_at
        if self._look and room and not (todo or expired or orphans or extend):
            # Reads never wait for the write lock: ask for it only when there is work.
            ready, self._next_due = store.probe(conn, list(room), now)
            self._look = bool(ready)
        take = self._look and bool(room)
        if not (todo or expired or orphans or extend or take):
            return []
        try:
            asked = time.monotonic()
            with transaction(conn):
                self._leases.lock_taken(asked, time.monotonic())
                stamp = self._leases.next_stamp(now) if extend or take else 0.0
                if extend:
                    self._extend(conn, stamp)
                settled, woke = self._apply(conn, todo)
                if expired or orphans:
                    woke |= self._reclaim(conn, orphans)
                rows = store.take(conn, self.owner, room, now, stamp) if take else []
        except BaseException:
            self._settle_q.give_back(todo)
            raise
        had_held = bool(self._held)
        for tag in settled:
            self._held.pop(tag)
        if woke:
            self._broker.waker.notify(woke)
        out = [self._held.deliver(r[6], store.envelope(r), r[7], (r[5], str(r[0])))
               for r in rows]
        if extend or not had_held:
            self._extend_at = now_m + self._broker.lease_s / 3
        if take and len(rows) < sum(room.values()):
            # Fewer than we had room for: the queues hold nothing else that is ready.
            self._look = False
            _, self._next_due = store.probe(conn, list(room), time.time())
        return out

    def _apply(self, conn: sqlite3.Connection,
               todo: list[tuple[Delivery, Action]]) -> tuple[list[int], set[str]]:
        """Carry out settlements; the tags settled and the queues that got ready messages."""
        settled: dict[int, None] = {}  # ordered set
        woke: set[str] = set()
        owner, limit = self.owner, self._broker.delivery_limit
        for delivery, action in todo:
            held = self._held.get(delivery.tag)
            if held is None or delivery.tag in settled:
                continue  # settled twice, or not ours
            _, (seq, message_id) = held
            if message_id != delivery.envelope.message_id:
                continue  # not ours
            settled[delivery.tag] = None
            if isinstance(action, Requeue):
                woke |= store.release(conn, "seq = ? AND owner = ?", (seq, owner), limit)
                continue
            # Ours, or put back after our lease ran out and not taken since: done with it.
            gone = conn.execute(
                "DELETE FROM messages WHERE seq = ? AND (owner = ? OR owner IS NULL)",
                (seq, owner)).rowcount
            if isinstance(action, Also):
                if gone:  # in the same transaction as the delete: both or neither
                    for target, envelope in action.publishes:
                        conn.execute(store.INSERT, store.row(target, envelope,
                                                             store.ready_at(0.0)))
                        woke.add(target)
                action = action.action
            if isinstance(action, Ack):
                continue
            assert isinstance(action, Republish)
            if not gone:
                log.warning("consumer.lease_lost",
                            task_id=clip(delivery.envelope.message_id, MAX_ECHO_CHARS),
                            queue=delivery.queue, owner=owner)
                continue  # another consumer has it now: a copy from us would double it
            if action.dead:
                conn.execute(store.INSERT_DEAD,
                             store.row(action.queue, action.envelope, time.time()))
            else:
                conn.execute(store.INSERT, store.row(action.queue, action.envelope,
                                                     store.ready_at(action.delay_s)))
                woke.add(action.queue)
        return list(settled), woke

    def _reclaim(self, conn: sqlite3.Connection, orphans: list[str]) -> set[str]:
        """Release the leases that ran out and everything the dead owners held."""
        woke: set[str] = set()
        limit = self._broker.delivery_limit
        for owner, stamp in self._leases.run_out(time.monotonic(), orphans):
            # Rows renewed since we looked carry a larger stamp and stay with their owner.
            woke |= store.release(conn, "owner = ? AND lease_until <= ?", (owner, stamp), limit)
        for owner in orphans:
            store.forget_owner(conn, owner)
            woke |= store.release(conn, "owner = ?", (owner,), limit)
        if woke or orphans:
            log.info("consumer.leases_reclaimed", queues=sorted(woke), dead_owners=orphans)
        return woke

    def _extend(self, conn: sqlite3.Connection, stamp: float) -> None:
        kept = store.extend(conn, self.owner, stamp)
        if kept < len(self._held):
            log.warning("consumer.leases_lost", held=len(self._held), kept=kept,
                        owner=self.owner)

    def _trouble(self, exc: sqlite3.Error) -> list[Delivery]:
        """Log a failed round and pause; raise once it has failed for :data:`GIVE_UP_S`."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failing_since > GIVE_UP_S:
            raise BrokerError(f"{self._broker.path} has failed for {GIVE_UP_S}s: {exc}")
        log.warning("consumer.broker_error", error=str(exc), path=self._broker.path)
        self._look = True
        # The write lock may be held by someone else: no lease of another runs out until
        # we have seen it free again, and we look again as soon as we wake.
        self._leases.lock_unseen()
        self._next_housekeeping = now
        self._sleep(0.5)
        return []

    # -- sleeping -----------------------------------------------------------------------

    def _sleep(self, remaining_s: float) -> None:
        """Block until woken, a deadline of ours comes, or ``remaining_s`` passes."""
        timeout = remaining_s
        if self._next_due is not None:
            timeout = min(timeout, self._next_due - time.time())
        now_m = time.monotonic()
        timeout = min(timeout, self._next_housekeeping - now_m)
        if self._held:
            timeout = min(timeout, self._extend_at - now_m)
        with self._settle_q.sleeping() as settlements_wait:
            if settlements_wait:
                self._woken = True
                return
            events = self._poller.poll(max(0, math.ceil(timeout * 1000)))
        for fd, _ in events:
            if fd == self._settle_q.fileno:
                self._settle_q.drain()
                self._woken = True
            elif self._listener.heard(self._held.prefetch):
                self._look = True

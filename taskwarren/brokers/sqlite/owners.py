"""Who holds a lease: owner names, whether an owner still runs, lease watching, fork safety.

A consumer leases the rows it takes (``owner``, ``lease_until``) and its ``poll``
extends the leases; a lease that runs out, or whose owner process is gone, puts the row
back as redelivered with ``delivery_count + 1``.

Leases never compare clocks across processes. ``lease_until`` is a stamp the owner makes
strictly larger at every renewal (still the wall-clock end of the lease, for older
versions sharing the file); another consumer judges a lease run out when it has watched
the same stamp, on its own monotonic clock, for a whole lease of time in which it saw the
write lock free. So a wall-clock step, or a writer holding the lock longer than a lease
(when the owner could not renew either), takes no lease away. Why not compare
``CLOCK_MONOTONIC`` readings: it is shared by the processes of one boot, but not across
time namespaces (containers may have their own), and durations measured by one process
need no shared clock at all. All processes of one database are expected to use the same
lease length (:data:`LEASE_S`): the watcher's own decides.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
import secrets
import socket
import sqlite3
import weakref
from typing import Protocol

#: Seconds a delivery stays leased to its consumer unless the consumer's poll extends it.
LEASE_S = 15.0
#: Seconds between a consumer's looks for expired leases and for owners that died.
HOUSEKEEPING_S = 2.0


# -- fork safety ------------------------------------------------------------------------


class _ForkAware(Protocol):
    def _forsake(self) -> None: ...


#: Connections a forked child inherited. They are kept referenced, never used and never
#: closed: SQLite forbids using a connection across fork(), closing included.
_INHERITED: list[object] = []
#: Brokers and consumers alive in this process, so a forked child can forsake theirs.
_LIVE: weakref.WeakSet[_ForkAware] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for item in list(_LIVE):
        item._forsake()


os.register_at_fork(after_in_child=_after_fork_in_child)


def track(item: _ForkAware) -> None:
    """Have ``item._forsake()`` called in a child this process forks."""
    _LIVE.add(item)


def inherit(conn: sqlite3.Connection | None) -> None:
    """Keep a connection the child inherited, unused and unclosed."""
    if conn is not None:
        _INHERITED.append(conn)


# -- owners -----------------------------------------------------------------------------


@functools.cache
def _host_tag() -> str:
    """This machine, boot and pid namespace, so that pids in owner names can be checked."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id") as f:
        parts.append(f.read().strip())
    with contextlib.suppress(OSError):
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:8]


def new_owner() -> str:
    """A name for a new consumer: host tag, pid, and a random part."""
    return f"{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"


def owner_alive(owner: str, directory: str) -> bool | None:
    """Whether the consumer ``owner`` still runs: ``None`` when it cannot be told.

    Its wake-up socket in ``directory`` answers while it runs and refuses once its
    process is gone (the file stays after a kill -9). Without the file, a pid on this
    host and namespace still tells; a consumer elsewhere (another container) is then
    left to its lease.
    """
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(os.path.join(directory, owner + ".sock"))
        return True
    except ConnectionRefusedError:
        return False
    except FileNotFoundError:
        pass
    except OSError:
        return None
    finally:
        probe.close()
    tag, _, rest = owner.partition("-")
    pid_text = rest.partition("-")[0]
    if tag != _host_tag() or not pid_text.isdigit():
        return None
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass
    return True


# -- watching leases --------------------------------------------------------------------


class LeaseWatch:
    """One consumer's own lease stamps, and other owners' as it watched them.

    Times are this process's monotonic clock (see the module docstring): the stamp each
    owner showed and since when, and since when the write lock has been seen free
    without a break.

    Args:
        owner: the watching consumer (its own leases are not watched).
        lease_s: how long a lease lasts unrenewed.
        busy_timeout_s: how long the consumer waits for the write lock in a round.
    """

    def __init__(self, owner: str, lease_s: float, busy_timeout_s: float) -> None:
        self.owner = owner
        self.lease_s = lease_s
        self._busy_timeout_s = busy_timeout_s
        self._stamp = 0.0  # the largest lease stamp this consumer wrote
        self._watched: dict[str, tuple[float, float]] = {}  # owner -> (stamp, seen since)
        self._writable_since = math.inf
        self._locked_at = -math.inf  # when this consumer last took the write lock

    def inspect(self, conn: sqlite3.Connection, now_m: float,
                directory: str) -> tuple[bool, list[str]]:
        """Note other owners' lease stamps; whether there are any, and the owners that died.

        An owner's stamp is the smallest ``lease_until`` of its rows: the lease it renewed
        least recently. A stamp not seen before starts a new watch.
        """
        rows = conn.execute("""SELECT owner, MIN(lease_until) FROM messages
                               WHERE owner IS NOT NULL GROUP BY owner""").fetchall()
        registered = conn.execute("SELECT DISTINCT owner FROM consumers").fetchall()
        owners = {owner for owner, _ in rows} | {owner for (owner,) in registered}
        watched: dict[str, tuple[float, float]] = {}
        for owner, stamp in rows:
            if owner == self.owner or stamp is None:
                continue
            seen = self._watched.get(owner)
            watched[owner] = seen if seen is not None and seen[0] == stamp else (stamp, now_m)
        self._watched = watched
        return bool(watched), sorted(o for o in owners
                                     if o != self.owner and owner_alive(o, directory) is False)

    def lock_taken(self, asked_m: float, now_m: float) -> None:
        """Track whether the write lock has been free all along since we last took it.

        A lock that kept us waiting (asked for at ``asked_m``, or taken after a long
        pause of our own, in which it may have been held) kept the owners of leases from
        renewing them too: their leases count afresh from now.
        """
        free = (now_m - asked_m < self._busy_timeout_s / 2
                and now_m - self._locked_at < 2 * HOUSEKEEPING_S + self._busy_timeout_s)
        if not free or self._writable_since == math.inf:
            self._writable_since = now_m
        self._locked_at = now_m

    def lock_unseen(self) -> None:
        """A round failed: the lock may be held by someone else, so no lease runs out
        until we have seen it free again."""
        self._writable_since = math.inf

    def next_stamp(self, now: float) -> float:
        """A lease stamp larger than any this consumer wrote, even if the clock went back."""
        self._stamp = max(now + self.lease_s, self._stamp + 0.001)
        return self._stamp

    def run_out(self, now_m: float, orphans: list[str]) -> list[tuple[str, float]]:
        """The owners (not in ``orphans``) whose watched stamp has lasted a whole lease.

        They are no longer watched. Rows they renewed since we looked carry a larger
        stamp than the one returned and stay with their owner.
        """
        out = []
        for owner, (stamp, since) in list(self._watched.items()):
            if owner in orphans or now_m - max(since, self._writable_since) < self.lease_s:
                continue
            out.append((owner, stamp))
            del self._watched[owner]
        return out

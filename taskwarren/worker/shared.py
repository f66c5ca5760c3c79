"""Memory the supervisor shares with its children: what each runs, what killed whom.

A child writes the id of the message each executor thread is running into its
slots; when a child dies, the supervisor reads them, so a death is counted against
the message that was running, not against the innocent ones merely prefetched.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import threading
import time
from collections.abc import Callable

#: Bytes per slot: a task id (UUID text is 36) with room to spare.
SLOT_BYTES = 64
#: How many killer messages are remembered.
KILL_RECORDS = 256
#: How often a reader retries a read of the kill record that overlapped a write.
_READ_TRIES = 1000


class RunningSlots:
    """One slot per executor thread of every child: the message id it runs, or empty."""

    def __init__(self, children: int, threads: int) -> None:
        self.threads = threads
        self._buf = multiprocessing.RawArray(ctypes.c_char, children * threads * SLOT_BYTES)

    def _offset(self, child: int, thread: int) -> int:
        return (child * self.threads + thread) * SLOT_BYTES

    def set(self, child: int, thread: int, message_id: str) -> None:
        """Record that ``thread`` of ``child`` started ``message_id``."""
        data = message_id.encode()[: SLOT_BYTES - 1]
        _write(self._buf, self._offset(child, thread), data + b"\0")

    def clear(self, child: int, thread: int) -> None:
        """Record that ``thread`` of ``child`` is idle."""
        self._buf[self._offset(child, thread)] = b"\0"

    def running(self, child: int) -> list[str]:
        """Message ids ``child`` was running."""
        out = []
        for thread in range(self.threads):
            raw = _read(self._buf, self._offset(child, thread), SLOT_BYTES).split(b"\0", 1)[0]
            if raw:
                out.append(raw.decode(errors="replace"))
        return out

    def clear_child(self, child: int) -> None:
        """Forget everything ``child`` was running (it was replaced)."""
        for thread in range(self.threads):
            self.clear(child, thread)


class Heartbeats:
    """When each child's I/O thread last went round its loop (monotonic seconds)."""

    def __init__(self, children: int) -> None:
        self._times = multiprocessing.RawArray(ctypes.c_double, children)

    def beat(self, child: int, now: float) -> None:
        """Record that ``child`` is alive at ``now``."""
        self._times[child] = now

    def ages(self, now: float) -> list[float]:
        """Seconds since each child's last beat (infinite if it never beat)."""
        return [now - t if t else float("inf") for t in self._times]

    def clear(self, child: int) -> None:
        """Forget ``child``'s beat (it is being replaced)."""
        self._times[child] = 0.0


class KillRecord:
    """How many worker processes each message has killed (a small shared ring).

    It also remembers suspects: messages that were running, with others, in a process
    that died. Nothing tells which of them did it, so none is charged; each runs alone
    next time, where a death is its own.

    Only the supervisor writes (:meth:`add`, :meth:`suspect`); children only read. There
    is no lock between them: a child SIGKILLed while holding one would leave it held and
    hang the supervisor's next write. Instead the writer makes a version odd while it
    changes the ring and even when done, and a reader retries a read that overlapped a
    change (a sequence lock, on which a killed reader has no hold).
    """

    def __init__(self) -> None:
        self._ids = multiprocessing.RawArray(ctypes.c_char, KILL_RECORDS * SLOT_BYTES)
        self._counts = multiprocessing.RawArray(ctypes.c_int, KILL_RECORDS)
        self._suspects = multiprocessing.RawArray(ctypes.c_int, KILL_RECORDS)
        self._next = multiprocessing.RawValue(ctypes.c_int, 0)
        self._version = multiprocessing.RawValue(ctypes.c_uint64, 0)
        # Threads of the writing process only: a thread cannot be SIGKILLed on its own.
        self._writer = threading.Lock()

    def _find(self, message_id: bytes) -> int:
        for i in range(KILL_RECORDS):
            off = i * SLOT_BYTES
            if (self._counts[i] or self._suspects[i]) and _read(
                self._ids, off, len(message_id) + 1
            ) == message_id + b"\0":
                return i
        return -1

    def _change(self, message_id: str, change: Callable[[int], int]) -> int:
        """Apply ``change`` to ``message_id``'s record, made anew if needed (supervisor)."""
        key = message_id.encode()[: SLOT_BYTES - 1]
        with self._writer:
            i = self._find(key)
            self._version.value += 1  # odd: readers retry
            try:
                if i < 0:
                    i = self._next.value
                    self._next.value = (i + 1) % KILL_RECORDS
                    self._counts[i] = 0
                    self._suspects[i] = 0
                    _write(self._ids, i * SLOT_BYTES, key + b"\0")
                return change(i)
            finally:
                self._version.value += 1

    def add(self, message_id: str) -> int:
        """Count one more kill by ``message_id``; returns its total (supervisor only)."""

        def count(i: int) -> int:
            self._counts[i] += 1
            return int(self._counts[i])

        return self._change(message_id, count)

    def suspect(self, message_id: str) -> None:
        """Remember that ``message_id`` ran, beside others, in a process that died."""

        def mark(i: int) -> int:
            self._suspects[i] = 1
            return 0

        self._change(message_id, mark)

    def _read_record(self, message_id: str) -> tuple[int, bool]:
        key = message_id.encode()[: SLOT_BYTES - 1]
        for _ in range(_READ_TRIES):
            before = self._version.value
            if before % 2 == 0:
                i = self._find(key)
                found = (int(self._counts[i]), bool(self._suspects[i])) if i >= 0 else (0, False)
                if self._version.value == before:
                    return found
            time.sleep(0.001)  # the supervisor is in the middle of a change
        return 0, False  # never settled: count nothing rather than wait (a kill more is tolerated)

    def kills(self, message_id: str) -> int:
        """How many processes ``message_id`` has killed (0 if none remembered)."""
        return self._read_record(message_id)[0]

    def suspected(self, message_id: str) -> bool:
        """Whether ``message_id`` is a suspect (it must then run alone)."""
        return self._read_record(message_id)[1]


def _write(buf: ctypes.Array[ctypes.c_char], offset: int, data: bytes) -> None:
    # A slice, not ctypes.memmove: a ctypes call lets go of the GIL, and an executor thread
    # about to start a task would wait for it behind the I/O thread (benchmarks/README.md).
    buf[offset:offset + len(data)] = data  # type: ignore[call-overload]  # c_char: bytes


def _read(buf: ctypes.Array[ctypes.c_char], offset: int, size: int) -> bytes:
    return buf[offset:offset + size]  # type: ignore[return-value]  # c_char: bytes

"""Memory the supervisor shares with its children: what each runs, what killed whom.

A child writes the id of the message each executor thread is running into its
slots; when a child dies, the supervisor reads them, so a death is counted against
the message that was running, not against the innocent ones merely prefetched.
"""

from __future__ import annotations

import ctypes
import multiprocessing

#: Bytes per slot: a task id (UUID text is 36) with room to spare.
SLOT_BYTES = 64
#: How many killer messages are remembered.
KILL_RECORDS = 256


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
    """How many worker processes each message has killed (a small shared ring)."""

    def __init__(self) -> None:
        self._ids = multiprocessing.RawArray(ctypes.c_char, KILL_RECORDS * SLOT_BYTES)
        self._counts = multiprocessing.RawArray(ctypes.c_int, KILL_RECORDS)
        self._next = multiprocessing.RawValue(ctypes.c_int, 0)
        self._mutex = multiprocessing.Lock()

    def _find(self, message_id: bytes) -> int:
        for i in range(KILL_RECORDS):
            off = i * SLOT_BYTES
            if self._counts[i] and _read(self._ids, off, len(message_id) + 1) == (
                message_id + b"\0"
            ):
                return i
        return -1

    def add(self, message_id: str) -> int:
        """Count one more kill by ``message_id``; returns its total."""
        key = message_id.encode()[: SLOT_BYTES - 1]
        with self._mutex:
            i = self._find(key)
            if i < 0:
                i = self._next.value
                self._next.value = (i + 1) % KILL_RECORDS
                _write(self._ids, i * SLOT_BYTES, key + b"\0")
                self._counts[i] = 0
            self._counts[i] += 1
            return int(self._counts[i])

    def kills(self, message_id: str) -> int:
        """How many processes ``message_id`` has killed (0 if none remembered)."""
        key = message_id.encode()[: SLOT_BYTES - 1]
        with self._mutex:
            i = self._find(key)
            return int(self._counts[i]) if i >= 0 else 0


def _write(buf: ctypes.Array[ctypes.c_char], offset: int, data: bytes) -> None:
    ctypes.memmove(ctypes.addressof(buf) + offset, data, len(data))


def _read(buf: ctypes.Array[ctypes.c_char], offset: int, size: int) -> bytes:
    return ctypes.string_at(ctypes.addressof(buf) + offset, size)

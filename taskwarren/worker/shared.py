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
        off = self._offset(child, thread)
        self._buf[off : off + len(data) + 1] = data + b"\0"

    def clear(self, child: int, thread: int) -> None:
        """Record that ``thread`` of ``child`` is idle."""
        self._buf[self._offset(child, thread)] = b"\0"

    def running(self, child: int) -> list[str]:
        """Message ids ``child`` was running."""
        out = []
        for thread in range(self.threads):
            off = self._offset(child, thread)
            raw = bytes(self._buf[off : off + SLOT_BYTES]).split(b"\0", 1)[0]
            if raw:
                out.append(raw.decode(errors="replace"))
        return out

    def clear_child(self, child: int) -> None:
        """Forget everything ``child`` was running (it was replaced)."""
        for thread in range(self.threads):
            self.clear(child, thread)


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
            if self._counts[i] and bytes(self._ids[off : off + len(message_id) + 1]) == (
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
                off = i * SLOT_BYTES
                self._ids[off : off + len(key) + 1] = key + b"\0"
                self._counts[i] = 0
            self._counts[i] += 1
            return int(self._counts[i])

    def kills(self, message_id: str) -> int:
        """How many processes ``message_id`` has killed (0 if none remembered)."""
        key = message_id.encode()[: SLOT_BYTES - 1]
        with self._mutex:
            i = self._find(key)
            return int(self._counts[i]) if i >= 0 else 0

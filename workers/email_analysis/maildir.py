"""Durable Maildir delivery: a message is on disk, fsynced, before anyone is told so.

:func:`deliver` writes the bytes to ``tmp/``, fsyncs the file, renames it into
``new/`` and fsyncs ``new/`` itself, so that the rename (the file's name in the
directory) survives a power loss as well as the bytes. Names are unique per delivery
(time, pid, a counter and random bits), never taken from the message.
"""

from __future__ import annotations

import itertools
import os
import secrets
import socket
import time
from pathlib import Path

__all__ = ["Maildir"]

_counter = itertools.count()


def _host() -> str:
    # '/' and ':' have meanings in Maildir names (a path, the info suffix).
    return socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"


class Maildir:
    """A Maildir the ingress delivers into (``tmp/``, ``new/`` and ``cur/`` created)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        for sub in ("tmp", "new", "cur"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._host = _host()

    def _name(self) -> str:
        return (f"{time.time_ns()}.P{os.getpid()}Q{next(_counter)}"
                f"R{secrets.token_hex(6)}.{self._host}")

    def deliver(self, data: bytes) -> Path:
        """Write ``data`` as a new message; return its path in ``new/`` once it is durable.

        Raises:
            OSError: the disk refused (full, read-only, ...); nothing is left in ``new/``.
        """
        name = self._name()
        tmp = self.root / "tmp" / name
        final = self.root / "new" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                     0o640)
        try:
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._sync_dir(self.root / "new")
        return final

    @staticmethod
    def _sync_dir(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def discard(path: Path) -> None:
        """Remove a delivered file that nothing will read (a duplicate, a refused message)."""
        path.unlink(missing_ok=True)

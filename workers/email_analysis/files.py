"""Reading message files, with one clear error for everything that cannot be read.

A message file that is missing, unreadable or too large will not get better
by retrying, so :class:`UnreadableMessageError` is the exception the ingest
task lists in ``dont_retry``: the message goes straight to the dead-letter
queue with the reason.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["DEFAULT_MAX_BYTES", "UnreadableMessageError", "max_message_bytes", "read_message_file"]

#: Largest message the pipeline reads, unless ``EMAIL_ANALYSIS_MAX_BYTES`` says otherwise.
DEFAULT_MAX_BYTES = 50 * 1024 * 1024


class UnreadableMessageError(Exception):
    """The message file cannot be read; retrying will not help."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def max_message_bytes() -> int:
    """The size limit from ``EMAIL_ANALYSIS_MAX_BYTES``, or :data:`DEFAULT_MAX_BYTES`."""
    raw = os.environ.get("EMAIL_ANALYSIS_MAX_BYTES", "").strip()
    try:
        value = int(raw) if raw else DEFAULT_MAX_BYTES
    except ValueError:
        return DEFAULT_MAX_BYTES
    return value if value > 0 else DEFAULT_MAX_BYTES


def _moved_in_maildir(path: Path) -> Path | None:
    """A Maildir message is moved from ``new/`` to ``cur/`` when a client sees it.

    ``new/NAME`` then lives on as ``cur/NAME:2,FLAGS``; find it there.
    """
    if path.parent.name != "new":
        return None
    cur = path.parent.parent / "cur"
    exact = cur / path.name
    if exact.is_file():
        return exact
    try:
        matches = sorted(cur.glob(f"{path.name}:2,*"))
    except OSError:
        return None
    return matches[0] if matches else None


def read_message_file(path: str | os.PathLike[str], max_bytes: int | None = None) -> bytes:
    """Return the bytes of the message file at ``path``.

    Raises :class:`UnreadableMessageError` when the file is missing (and was
    not just moved from ``new/`` to ``cur/`` of its Maildir), is not a regular
    file, is larger than ``max_bytes`` or cannot be read.
    """
    limit = max_message_bytes() if max_bytes is None else max_bytes
    target = Path(path)
    try:
        info = target.stat()
    except FileNotFoundError:
        moved = _moved_in_maildir(target)
        if moved is None:
            raise UnreadableMessageError(path, "no such file") from None
        target = moved
        try:
            info = target.stat()
        except OSError as exc:
            raise UnreadableMessageError(path, f"cannot stat: {exc.strerror}") from None
    except OSError as exc:
        raise UnreadableMessageError(path, f"cannot stat: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise UnreadableMessageError(path, "not a regular file")
    if info.st_size > limit:
        raise UnreadableMessageError(
            path, f"{info.st_size} bytes is over the limit of {limit} bytes"
        )
    try:
        with open(target, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise UnreadableMessageError(path, f"cannot read: {exc.strerror or exc}") from None
    if len(data) > limit:  # it grew after the stat
        raise UnreadableMessageError(path, f"more than the limit of {limit} bytes")
    return data

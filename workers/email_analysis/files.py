"""Reading message files, with one clear error for everything that cannot be read.

A message file that is missing, unreadable or too large will not get better
by retrying, so :class:`UnreadableMessageError` is the exception the ingest
task lists in ``dont_retry``: the message goes straight to the dead-letter
queue with the reason.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "DEFAULT_MAX_BYTES",
    "UnreadableMessageError",
    "maildir_root",
    "max_message_bytes",
    "moved_in_maildir",
    "read_message_file",
]

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


def maildir_root(environ: Mapping[str, str] | None = None) -> Path | None:
    """The directory ``ingest`` may read below, from ``EMAIL_ANALYSIS_MAILDIR`` (or None)."""
    env = os.environ if environ is None else environ
    raw = env.get("EMAIL_ANALYSIS_MAILDIR", "").strip()
    return Path(raw) if raw else None


def moved_in_maildir(path: Path) -> Path | None:
    """A Maildir message is moved from ``new/`` to ``cur/`` when a client sees it.

    ``new/NAME`` then lives on as ``cur/NAME:2,FLAGS``; find it there. The name is
    compared as it is, never as a pattern: a ``*`` in it must not match another message.
    """
    if path.parent.name != "new":
        return None
    cur = path.parent.parent / "cur"
    exact = cur / path.name
    if exact.is_file():
        return exact
    prefix = path.name + ":2,"
    try:
        matches = sorted(name for name in os.listdir(cur) if name.startswith(prefix))
    except OSError:
        return None
    return cur / matches[0] if matches else None


def _confined(given: str | os.PathLike[str], path: Path, root: Path | None) -> Path:
    """``path`` with symlinks and ``..`` resolved, refused unless it lies below ``root``."""
    if root is None:
        return path
    try:
        base = Path(os.path.realpath(root))
        resolved = Path(os.path.realpath(base / path))  # an absolute path stays as it is
    except (OSError, ValueError) as exc:
        raise UnreadableMessageError(given, f"not a usable path ({exc})") from None
    if resolved == base or not resolved.is_relative_to(base):
        raise UnreadableMessageError(given, "outside the maildir (EMAIL_ANALYSIS_MAILDIR)")
    return resolved


def _open(path: Path, root: Path | None) -> int:
    """A file descriptor of ``path``; below ``root``, opened without following any symlink.

    ``path`` was resolved and checked to lie below ``root``; walking down from ``root``
    with ``O_NOFOLLOW`` keeps a symlink swapped in since then from leading elsewhere.
    ``O_NONBLOCK`` keeps a FIFO put in the file's place from blocking the open.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if root is None:
        return os.open(path, flags)
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    base = os.path.realpath(root)
    parts = path.relative_to(base).parts
    fd = os.open(base, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        for part in parts[:-1]:
            below = os.open(part, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | nofollow,
                            dir_fd=fd)
            os.close(fd)
            fd = below
        return os.open(parts[-1], flags | nofollow, dir_fd=fd)
    finally:
        os.close(fd)


def read_message_file(
    path: str | os.PathLike[str], max_bytes: int | None = None, root: Path | None = None
) -> bytes:
    """Return the bytes of the message file at ``path``.

    With ``root``, only a file below that directory is read, after resolving symlinks
    and ``..`` (a relative ``path`` is taken from ``root``).

    Raises :class:`UnreadableMessageError` when the file is missing (and was
    not just moved from ``new/`` to ``cur/`` of its Maildir), lies outside ``root``,
    is not a regular file, is larger than ``max_bytes`` or cannot be read.
    """
    limit = max_message_bytes() if max_bytes is None else max_bytes
    target = _confined(path, Path(path), root)
    try:
        try:
            fd = _open(target, root)
        except FileNotFoundError:
            moved = moved_in_maildir(target)
            if moved is None:
                raise UnreadableMessageError(path, "no such file") from None
            fd = _open(_confined(path, moved, root), root)
    except OSError as exc:
        raise UnreadableMessageError(path, f"cannot open: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL in the name
        raise UnreadableMessageError(path, f"not a usable path ({exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableMessageError(path, "not a regular file")
        if info.st_size > limit:
            raise UnreadableMessageError(
                path, f"{info.st_size} bytes is over the limit of {limit} bytes"
            )
        with open(fd, "rb", closefd=False) as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise UnreadableMessageError(path, f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > limit:  # it grew after the stat
        raise UnreadableMessageError(path, f"more than the limit of {limit} bytes")
    return data

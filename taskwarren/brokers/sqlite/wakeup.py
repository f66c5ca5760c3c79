"""Wake-up sockets: idle consumers sleep until a publisher names one of their queues.

Each consumer binds a Unix datagram socket, ``<owner>.sock``, in a directory next to
the database (:func:`wake_dir`), and whoever makes messages ready sends every socket
there the queues' names (:class:`Waker`). A lost datagram costs only latency: consumers
also look every few seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import stat
import threading
from collections.abc import Container, Iterable

import structlog

log = structlog.get_logger("taskwarren.sqlite")

#: Longest socket path we bind (``sun_path`` holds 108 bytes on Linux, 104 on macOS).
MAX_SOCKET_PATH = 100
#: Upper bound of a socket file name: ``<owner>.sock``.
_SOCKET_NAME_MAX = 40
#: Where wake-up sockets go when the database's path is too long for them.
_TMP = "/tmp"


def wake_dir(db_path: str) -> str:
    """Where consumers of ``db_path`` bind their wake-up sockets.

    Next to the database when the socket paths fit, else a per-user directory in
    ``/tmp`` named after the database path (every process computes the same one).
    """
    near = db_path + ".wake"
    if len(near) + 1 + _SOCKET_NAME_MAX <= MAX_SOCKET_PATH:
        return near
    digest = hashlib.sha256(db_path.encode()).hexdigest()[:20]
    return os.path.join(_TMP, f"taskwarren-{os.getuid()}", digest)


def _make_wake_dir(directory: str) -> None:
    """Create the wake-up directory; in ``/tmp``, trust only a private one of this user.

    Only the fallback under ``/tmp/taskwarren-<uid>`` is made private: a directory next
    to a database that happens to lie in ``/tmp`` itself leaves ``/tmp`` alone.
    """
    base = os.path.dirname(directory)
    if base == os.path.join(_TMP, f"taskwarren-{os.getuid()}"):
        with contextlib.suppress(FileExistsError):
            os.mkdir(base, 0o700)
        st = os.lstat(base)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise PermissionError(f"{base} is not a directory of this user")
        if st.st_mode & 0o077:
            os.chmod(base, 0o700)
    os.makedirs(directory, exist_ok=True)


class Waker:
    """Sends one datagram naming the queues to every consumer socket in a directory."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def _socket(self) -> socket.socket:
        with self._lock:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.setblocking(False)
                self._sock = sock
            return self._sock

    def notify(self, queues: Iterable[str]) -> None:
        """Wake every consumer; never raises (a consumer also looks every few seconds)."""
        names = sorted(set(queues))
        if not names:
            return
        try:
            entries = os.listdir(self.directory)
        except OSError:
            return  # no consumer ever started here
        payload = "\n".join(names).encode()
        if len(payload) > 4096:
            payload = b""  # means "look at every queue"
        sock = self._socket()
        for entry in entries:
            if not entry.endswith(".sock"):
                continue
            path = os.path.join(self.directory, entry)
            try:
                sock.sendto(payload, path)
            except ConnectionRefusedError:
                with contextlib.suppress(OSError):
                    os.unlink(path)  # its consumer died without closing
            except (BlockingIOError, FileNotFoundError):
                pass  # a wake-up is already pending there, or it just closed
            except OSError as exc:
                log.debug("consumer.wake_failed", path=path, error=str(exc))

    def close(self) -> None:
        """Close the sending socket (a new one is made if it is used again)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def forsake(self) -> None:
        """After fork, in the child: a fresh socket next time."""
        self._lock = threading.Lock()
        self._sock = None


class Listener:
    """A consumer's own wake-up socket; while bound, it also tells that its owner runs.

    Args:
        directory: the wake-up directory of the database.
        owner: the consumer's owner name, the socket's file name.
    """

    def __init__(self, directory: str, owner: str) -> None:
        self.path = os.path.join(directory, owner + ".sock")
        self._sock: socket.socket | None = None
        self._unwakeable = False  # no socket could be bound: look every few seconds

    def bind(self, looks_every_s: float) -> int | None:
        """Bind the socket unless bound; its file descriptor when newly bound.

        A socket that cannot be bound is logged once: the consumer then only looks every
        ``looks_every_s``.
        """
        if self._sock is not None:
            return None
        directory = os.path.dirname(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            try:
                _make_wake_dir(directory)
                sock.bind(self.path)
            except FileNotFoundError:  # a closing consumer removed the empty directory
                _make_wake_dir(directory)
                sock.bind(self.path)
        except OSError as exc:
            sock.close()
            if not self._unwakeable:
                self._unwakeable = True
                log.warning("consumer.no_wake_socket", path=self.path, error=str(exc),
                            looks_every_s=looks_every_s)
            return None
        self._sock = sock
        return sock.fileno()

    def heard(self, queues: Container[str]) -> bool:
        """Read the datagrams waiting; whether one names one of ``queues`` (or all)."""
        sock = self._sock
        look = False
        while sock is not None:
            try:
                data = sock.recv(8192)
            except OSError:  # BlockingIOError: all read
                break
            names = data.decode(errors="replace").split("\n") if data else []
            if not names or any(name in queues for name in names):
                look = True
        return look

    def forsake(self) -> None:
        """In a forked child: close this copy, which leaves the parent's socket bound.

        The child's copy must go, or the socket would answer for the parent after the
        parent died.
        """
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        """Close and remove the socket, and the directory if it is empty now."""
        if self._sock is None:
            return
        self._sock.close()
        self._sock = None
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(self.path))  # only if it is empty now

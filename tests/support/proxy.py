"""A TCP proxy between clients and a broker that cuts and stalls links on demand."""

from __future__ import annotations

import contextlib
import random
import select
import socket
import threading
import time


class FaultyProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``.

    :meth:`cut_all` and :meth:`cut_one` close links abruptly (both sides at once);
    :meth:`stall` stops forwarding in both directions for a while (a black hole: the
    bytes wait in kernel buffers, nothing is lost unless a peer gives up).
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._links: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._stalled_until = 0.0
        #: Seconds the broker's first bytes on a new link wait before they are passed on
        #: (a broker slow to answer a connection: loaded, or asking an LDAP server).
        self.open_delay_s = 0.0
        self.accepted = 0
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._links.append((client, upstream))
                self.accepted += 1
            threading.Thread(target=self._pump, args=(client, upstream), name="proxy-pump",
                             daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        answered = False
        try:
            while not self._closed:
                pause = self._stalled_until - time.monotonic()
                if pause > 0:
                    time.sleep(min(pause, 0.1))
                    continue
                readable, _, _ = select.select([a, b], [], [], 0.1)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is b and not answered:
                        answered = True
                        time.sleep(self.open_delay_s)
                    peer[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            self._forget(a, b)

    def _forget(self, a: socket.socket, b: socket.socket) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._links.remove((a, b))
        for sock in (a, b):
            with contextlib.suppress(OSError):
                sock.close()

    @staticmethod
    def _sever(a: socket.socket, b: socket.socket) -> None:
        for sock in (a, b):
            with contextlib.suppress(OSError):
                # A zero linger turns close into a reset: the peer sees ECONNRESET.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def links(self) -> int:
        with self._lock:
            return len(self._links)

    def cut_all(self) -> int:
        """Reset every open link; returns how many."""
        with self._lock:
            links = list(self._links)
        for a, b in links:
            self._sever(a, b)
        return len(links)

    def cut_one(self, rng: random.Random) -> int:
        """Reset one link chosen at random; returns 1, or 0 when none is open."""
        with self._lock:
            if not self._links:
                return 0
            a, b = rng.choice(self._links)
        self._sever(a, b)
        return 1

    def stall(self, seconds: float) -> None:
        """Forward nothing, either way, for ``seconds``."""
        self._stalled_until = time.monotonic() + seconds

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut_all()

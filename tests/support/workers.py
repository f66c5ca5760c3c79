"""Worker pools started through the real CLI, and ledgers that tasks write."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def wait_until(predicate: Callable[[], object], timeout: float = 30.0,
               interval: float = 0.05, what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Ledger:
    """Lines ``event n pid time`` appended by test tasks (O_APPEND, one write per line)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def __str__(self) -> str:
        return str(self.path)

    def events(self) -> list[tuple[str, int, int]]:
        out = []
        for line in self.path.read_text().splitlines():
            event, n, pid, _ = line.split()
            out.append((event, int(n), int(pid)))
        return out

    def times(self, event: str, n: int) -> list[float]:
        """Wall-clock times at which task ``n`` recorded ``event``."""
        out = []
        for line in self.path.read_text().splitlines():
            e, m, _, t = line.split()
            if e == event and int(m) == n:
                out.append(float(t))
        return out

    def count(self, event: str) -> Counter[int]:
        return Counter(n for e, n, _ in self.events() if e == event)

    def pids(self, event: str = "end") -> Counter[int]:
        return Counter(pid for e, _, pid in self.events() if e == event)


class Pool:
    """``taskwarren worker`` in a subprocess of its own session."""

    def __init__(self, module: str, queues: list[str], url: str, concurrency: int = 2,
                 extra: list[str] | None = None, env: dict[str, str] | None = None,
                 log_path: Path | None = None) -> None:
        argv = [sys.executable, "-m", "taskwarren", "--log-format", "json", "worker", module,
                "-c", str(concurrency), "-Q", ",".join(queues), "--url", url, *(extra or [])]
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        full_env.pop("TASKWARREN_URL", None)
        self.log_path = log_path
        self._log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(argv, env=full_env, cwd=str(ROOT), stdout=self._log,
                                     stderr=self._log, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def children(self) -> list[int]:
        """PIDs of the pool's child processes."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                             text=True)
        return [int(p) for p in out.stdout.split()]

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the whole process group (cleanup)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        if self._log is not subprocess.DEVNULL:
            self._log.close()

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path else ""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str:
    """The text of a worker pool's ``/metrics`` on ``port``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())

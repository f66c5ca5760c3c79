"""A private PostgreSQL server for chaos scenarios that restart the database.

The shared server (127.0.0.1:5432) is never restarted: a scenario that takes the store
away starts its own with ``initdb``/``pg_ctl`` in a temporary directory on a free port
(trust authentication, user ``postgres``), restarts it at will (``pg_ctl stop -m
immediate``: a crash, no goodbye to clients) and deletes it afterwards. Run as root, the
programs run as user ``postgres`` (``initdb`` refuses root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.chaos.nodes import _base_parent
from tests.support.workers import free_port


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's ``bin`` directory, if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


class PrivatePostgres:
    """One PostgreSQL server of the scenario's own."""

    def __init__(self) -> None:
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise RuntimeError("no PostgreSQL programs under /usr/lib/postgresql/*/bin")
        self.bin = bin_dir
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="twpg-", dir=_base_parent()))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self._as = "postgres" if os.geteuid() == 0 else None
        if self._as is not None:
            user = pwd.getpwnam(self._as)
            os.chown(self.base, user.pw_uid, user.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str, timeout: float = 60.0) -> None:
        argv = [str(self.bin / program), *args]
        if self._as is not None:
            argv = ["runuser", "-u", self._as, "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              cwd=str(self.base))
        if done.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} exited {done.returncode}: "
                               f"{done.stderr[-1000:]}{self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return "\n" + "\n".join(self.log.read_text().splitlines()[-10:])
        except OSError:
            return ""

    def init(self) -> None:
        """Create the cluster and start the server."""
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")
        self.start()

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base} "
                   "-c fsync=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "60", "start")

    def crash(self) -> None:
        """Stop at once, as a crash would (clients' sessions end mid-statement)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def restart(self, down_s: float) -> float:
        """Crash, stay down ``down_s``, start again; returns the seconds it was down."""
        began = time.monotonic()
        self.crash()
        time.sleep(down_s)
        self.start()
        return time.monotonic() - began

    def destroy(self) -> None:
        """Stop the server (if it runs) and delete its data."""
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop",
                          timeout=30)
        shutil.rmtree(self.base, ignore_errors=True)

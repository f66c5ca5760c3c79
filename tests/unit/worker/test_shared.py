"""The memory a supervisor shares with its children survives a child killed at any point."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from multiprocessing.connection import Connection

from taskwarren.worker import shared
from taskwarren.worker.shared import KillRecord

fork = multiprocessing.get_context("fork")


def _killed_while_reading(record: KillRecord, ready: Connection) -> None:
    def stuck(*args: object) -> bytes:
        ready.send("reading")
        threading.Event().wait()  # until SIGKILL, in the middle of a lookup
        return b""

    shared._read = stuck  # type: ignore[assignment]
    record.kills("poison")


def test_a_child_killed_while_reading_the_kill_record_does_not_hang_the_supervisor() -> None:
    record = KillRecord()
    assert record.add("poison") == 1
    receive, ready = fork.Pipe(duplex=False)
    child = fork.Process(target=_killed_while_reading, args=(record, ready), daemon=True)
    child.start()
    assert receive.poll(10) and receive.recv() == "reading"
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)

    counted: list[int] = []
    supervisor = threading.Thread(target=lambda: counted.append(record.add("poison")),
                                  daemon=True)
    supervisor.start()
    supervisor.join(5)

    assert counted == [2]
    assert record.kills("poison") == 2

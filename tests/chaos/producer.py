"""A producer process for the chaos suite, made to be killed with SIGKILL mid-``send_many``.

``python -m tests.chaos.producer --url U --queue Q --ledger L --first N --count C``
sends tasks ``N .. N+C-1`` in batches. Before each batch it appends ``begin n..`` to
the journal, and only after ``send_many`` returned ``ok n:id ..``, each with one
``O_APPEND`` write and ``fdatasync``: whatever the journal calls ``ok`` was confirmed
by the broker, and whatever it lists under ``begin`` only may or may not have landed.
"""

from __future__ import annotations

import argparse
import os
import time

from taskwarren import Warren
from tests.chaos import chaostasks


def append_line(path: str, line: str) -> None:
    """Append ``line`` to ``path`` in one write, on disk before it returns."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fdatasync(fd)
    finally:
        os.close(fd)


def read_journal(path: str) -> tuple[dict[int, str], set[int]]:
    """(confirmed number -> task id, numbers begun but never confirmed)."""
    confirmed: dict[int, str] = {}
    begun: set[int] = set()
    try:
        with open(path) as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        return confirmed, begun
    for line in lines:
        kind, _, rest = line.partition(" ")
        if kind == "begin":
            begun.update(int(n) for n in rest.split())
        elif kind == "ok" and line.endswith(" ."):
            for pair in rest.split()[:-1]:
                n, _, task_id = pair.partition(":")
                confirmed[int(n)] = task_id
    return confirmed, begun - set(confirmed)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--journal", required=True)
    parser.add_argument("--first", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--sleep-s", type=float, default=0.0)
    parser.add_argument("--pause-s", type=float, default=0.0)
    args = parser.parse_args()
    app = Warren(url=args.url, publish_timeout_s=60)
    task = app.task(name=chaostasks.record.name, queue=args.queue)(chaostasks.record.fn)
    append_line(args.journal, "started\n")
    end = args.first + args.count
    for start in range(args.first, end, args.batch):
        numbers = list(range(start, min(start + args.batch, end)))
        append_line(args.journal, "begin " + " ".join(map(str, numbers)) + "\n")
        ids = task.send_many([{"n": n, "ledger": args.ledger, "sleep_s": args.sleep_s}
                              for n in numbers])
        pairs = " ".join(f"{n}:{task_id}" for n, task_id in zip(numbers, ids, strict=True))
        append_line(args.journal, f"ok {pairs} .\n")
        if args.pause_s:
            time.sleep(args.pause_s)
    app.close()


if __name__ == "__main__":
    main()

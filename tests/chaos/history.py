"""The recorded history of a chaos run and the checker that judges it.

What producers did (numbers sent and confirmed, numbers whose send was cut short),
what faults were injected and when, and what ran (the ledger that tasks append to)
are kept apart and only joined by the checker, after the run, as in Jepsen.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

#: Why a number ran more than once; the keys of :attr:`Verdict.sources`.
REDELIVERED_KILLED = "redelivered: its worker was killed after the task ran, before the ack"
REDELIVERED_OTHER = "redelivered: the ack was lost (link, broker or pool stop)"
REPUBLISHED = "published twice: a confirm was lost and the producer published it again"
RETRY_REPUBLISHED = "retry copy published twice: a confirm was lost and the worker published again"
SENT_TWICE = "sent twice by the application (a new message for the same number)"
UNKNOWN = "unknown (no delivery facts on the ledger line)"


@dataclass(frozen=True, slots=True)
class Run:
    """One ledger line: task ``n`` ran in process ``pid`` at ``at``."""

    n: int
    pid: int
    at: float
    message_id: str
    redelivered: int
    delivery_count: int
    attempt: int


def read_ledger(path: Path) -> list[Run]:
    """Every complete line of the ledger (a torn last line is impossible with O_APPEND
    writes this small, but is skipped rather than trusted)."""
    runs = []
    with open(path, "rb") as f:
        data = f.read()
    for raw in data.split(b"\n"):
        parts = raw.split()
        if len(parts) != 7:
            continue
        n, pid, at, mid, red, count, attempt = parts
        runs.append(Run(int(n), int(pid), float(at), mid.decode(), int(red), int(count),
                        int(attempt)))
    return runs


def ledger_numbers(path: Path) -> set[int]:
    return {run.n for run in read_ledger(path)}


@dataclass(slots=True)
class Fault:
    """One injected fault."""

    at: float
    kind: str
    detail: str = ""
    pids: tuple[int, ...] = ()


@dataclass
class History:
    """What a scenario did, recorded as it happened (thread-safe)."""

    confirmed: dict[int, str] = field(default_factory=dict)
    in_doubt: set[int] = field(default_factory=set)
    send_errors: list[str] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def sent(self, numbers: list[int], ids: list[str]) -> None:
        """``numbers`` were confirmed by the broker, as task ``ids``."""
        with self._lock:
            self.confirmed.update(zip(numbers, ids, strict=True))
            self.in_doubt.difference_update(numbers)

    def doubt(self, numbers: list[int] | set[int], error: str | None = None) -> None:
        """``numbers`` were sent but not confirmed (a failed send, if ``error``)."""
        with self._lock:
            self.in_doubt.update(n for n in numbers if n not in self.confirmed)
            if error is not None:
                self.send_errors.append(error)

    def fault(self, kind: str, detail: str = "", pids: tuple[int, ...] = ()) -> None:
        with self._lock:
            self.faults.append(Fault(time.time(), kind, detail, pids))

    def note(self, text: str) -> None:
        with self._lock:
            self.notes.append(text)

    def fault_summary(self) -> str:
        counts = Counter(f.kind for f in self.faults)
        return ", ".join(f"{count} {kind}" for kind, count in sorted(counts.items())) or "none"

    def killed_pids(self) -> set[int]:
        return {pid for f in self.faults for pid in f.pids}


@dataclass
class Verdict:
    """What the checker found."""

    confirmed: int
    lost: list[int]
    duplicates: int
    sources: Counter[str]
    unexpected: list[int]
    in_doubt: int
    in_doubt_ran: int
    runs: int

    def explain(self) -> str:
        return "; ".join(f"{count} {why}" for why, count in self.sources.most_common()) or "-"


def check(history: History, ledger: Path) -> Verdict:
    """Join what was confirmed with what ran.

    lost: confirmed but never ran. duplicates: runs beyond the first of a number, each
    given a source. unexpected: ran but never sent (must not happen).
    """
    runs = read_ledger(ledger)
    by_n: dict[int, list[Run]] = {}
    for run in sorted(runs, key=lambda r: r.at):
        by_n.setdefault(run.n, []).append(run)
    killed = history.killed_pids()
    sources: Counter[str] = Counter()
    for n, seen in by_n.items():
        first = seen[0]
        for later in seen[1:]:
            sources[_source(history, n, first, later, killed)] += 1
    lost = sorted(n for n in history.confirmed if n not in by_n)
    known = set(history.confirmed) | history.in_doubt
    unexpected = sorted(n for n in by_n if n not in known)
    return Verdict(
        confirmed=len(history.confirmed),
        lost=lost,
        duplicates=sum(len(seen) - 1 for seen in by_n.values()),
        sources=sources,
        unexpected=unexpected,
        in_doubt=len(history.in_doubt),
        in_doubt_ran=sum(1 for n in history.in_doubt if n in by_n),
        runs=len(runs),
    )


def _source(history: History, n: int, first: Run, later: Run, killed: set[int]) -> str:
    if later.message_id == "-" or first.message_id == "-":
        return UNKNOWN
    sent_id = history.confirmed.get(n)
    if later.message_id != first.message_id or (sent_id and later.message_id != sent_id):
        return SENT_TWICE
    if later.redelivered == 1:
        return REDELIVERED_KILLED if first.pid in killed else REDELIVERED_OTHER
    return RETRY_REPUBLISHED if later.attempt > 0 else REPUBLISHED


@dataclass
class Row:
    """One line of the figures table."""

    scenario: str
    tasks: int
    faults: str
    lost: int
    duplicates: int
    drain_s: float
    wall_s: float
    sources: str
    in_doubt: str
    passed: bool = True
    notes: list[str] = field(default_factory=list)
    seed: int = 0

    @staticmethod
    def header() -> str:
        return ("| scenario | tasks | faults injected | lost | duplicates | drain s | "
                "wall s | in doubt (ran/total) | duplicate sources |\n"
                "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |")

    def markdown(self) -> str:
        mark = "" if self.passed else " **FAILED**"
        return (f"| {self.scenario}{mark} | {self.tasks} | {self.faults} | {self.lost} | "
                f"{self.duplicates} | {self.drain_s:.1f} | {self.wall_s:.1f} | "
                f"{self.in_doubt} | {self.sources} |")

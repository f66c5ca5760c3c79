"""One outbox chaos scenario: application processes, relay processes, worker pools, faults.

The chaos :class:`~tests.chaos.harness.Scenario` with the producer replaced: the
applications (``outbox_app.py``) write orders and their tasks in one transaction each
and commit or roll back; relays (``outbox_relay.py``, or the one beside a worker pool)
publish the committed rows. Nothing the applications do is recorded as it happens: after
they are done, ``orders`` says what committed, and that is what must run.

The checker adds to the chaos one: no rolled-back order ran (the chaos checker's "ran
but never sent"), the outbox is empty with nothing rejected, and each duplicate is
attributed from the relays' claim journals (which relay held the row, and whether it
was killed holding it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from taskwarren.store import open_store
from tests.chaos.harness import Scenario
from tests.chaos.history import Row, Verdict, ledger_numbers, read_ledger
from tests.chaos.outbox_app import committed_orders, create_orders
from tests.support.workers import ROOT, wait_until

RELAY_KILLED = "published again: its relay was killed holding it (mid-publish or before the DELETE)"
CLAIMED_TWICE = ("claimed again with no kill or failure recorded: the first relay outlived its "
                 "lease (slow), or two relays held it at once (a bug; O4 fails on it)")
REPUBLISHED_ONE_CLAIM = "published twice in one claim (by the broker client, after a lost link)"
REPUBLISHED_AFTER_FAILURE = ("published again: a relay's publish or DELETE failed (a cut link, "
                             "a lost database session) after the broker had the message")
NO_JOURNAL = "published twice (no claim journal: the relay beside the pool)"
REDELIVERED = "redelivered: the ack was lost (link, broker or pool stop)"


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TASKWARREN_URL", None)
    env.pop("TASKWARREN_STORE_URL", None)
    return env


class Claims:
    """What the relays' journals say: every claim, and which relays were killed."""

    def __init__(self, journals: list[Path]) -> None:
        self.by_task: dict[str, list[int]] = {}
        self.handed_back: set[str] = set()
        self.dying: dict[int, str] = {}
        self.claims = 0
        for path in journals:
            with contextlib.suppress(FileNotFoundError):
                for line in path.read_text().splitlines():
                    kind, _, rest = line.partition(" ")
                    if kind == "claim":
                        pid, *task_ids = rest.split()
                        self.claims += 1
                        for task_id in task_ids:
                            self.by_task.setdefault(task_id, []).append(int(pid))
                    elif kind in ("undeleted", "released"):
                        self.handed_back.update(rest.split()[1:])
                    elif kind == "dying":
                        pid, why = rest.split()
                        self.dying[int(pid)] = why

    def claimed_more_than_once(self) -> dict[str, list[int]]:
        return {t: pids for t, pids in self.by_task.items() if len(pids) > 1}


@dataclass(frozen=True)
class App:
    """A running application process: it places orders ``first .. first+count-1``."""

    proc: subprocess.Popen[bytes]
    status: Path
    first: int
    count: int


class OutboxScenario(Scenario):
    """A chaos scenario whose tasks go through the outbox of ``store_url``.

    Args:
        store_url: a fresh database; ``orders`` and taskwarren's tables are created.
        relay_url: the broker URL relays publish to (default: ``url``).
        rollback: the fraction of orders each application rolls back on purpose.
    """

    def __init__(self, name: str, url: str, admin_url: str, workdir: Path,
                 results: list[Row], store_url: str, tasks: int,
                 relay_url: str | None = None, rollback: float = 0.3,
                 pool_env: dict[str, str] | None = None) -> None:
        super().__init__(name, url, admin_url, workdir, results, tasks=tasks, sleep_s=0.0,
                         pool_env=pool_env)
        self.store_url = store_url
        self.relay_url = relay_url or url
        self.rollback = rollback
        self.relays: dict[str, subprocess.Popen[bytes]] = {}
        self.journals: list[Path] = []
        self._apps: list[subprocess.Popen[bytes]] = []
        self._next_first = 0
        self.attempted = 0
        store = open_store(store_url)
        try:
            store.init()
        finally:
            store.close()
        create_orders(store_url)

    def close(self) -> None:
        for proc in [*self._apps, *self.relays.values()]:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
                proc.communicate(timeout=10)
        super().close()

    # -- relays --------------------------------------------------------------------------

    def start_relay(self, name: str, *hooks: str, url: str | None = None,
                    lease_s: float = 3.0, wait: bool = True) -> subprocess.Popen[bytes]:
        """A relay process; ``hooks`` are extra ``outbox_relay`` arguments (``--die-at``)."""
        journal = self.workdir / f"relay-{name}-{len(self.journals)}.txt"
        self.journals.append(journal)
        argv = [sys.executable, "-m", "tests.chaos.outbox_relay", "--url",
                url or self.relay_url, "--store-url", self.store_url, "--journal",
                str(journal), "--lease-s", str(lease_s), "--seed", str(self.seed), *hooks]
        log = open(self.workdir / f"relay-{name}-{len(self.journals)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(argv, cwd=str(ROOT), env=_env(), stdout=log, stderr=log)
        log.close()
        self.relays[name] = proc
        if wait:
            self.await_relay_start(name)
        return proc

    def await_relay_start(self, name: str) -> None:
        proc = self.relays[name]
        journal = Path(proc.args[proc.args.index("--journal") + 1])  # type: ignore[union-attr]
        wait_until(lambda: proc.poll() is not None or journal.exists(), 30,
                   what=f"relay {name} starting")

    def await_relay_death(self, name: str, timeout: float = 60.0) -> None:
        """Wait for a relay with a ``--die-at`` switch to kill itself; record the fault."""
        proc = self.relays.pop(name)
        code = proc.wait(timeout)
        if code != -signal.SIGKILL:
            self.problems.append(f"relay {name} exited {code}, not by its own kill -9")
        why = Claims(self.journals).dying.get(proc.pid, "?")
        self.history.fault(f"relay kill -9 {why}", name, (proc.pid,))

    def stop_relays(self) -> None:
        """SIGTERM every running relay; each must exit 0."""
        for name, proc in list(self.relays.items()):
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            if code != 0:
                self.problems.append(f"relay {name} exited {code} after SIGTERM")
        self.relays.clear()

    # -- applications --------------------------------------------------------------------

    def run_app(self, count: int, *extra: str, hold: int | None = None,
                hold_at: str = "before-commit", pause_s: float = 0.0) -> App:
        """Start an application placing ``count`` new orders (numbers never used before);
        with ``hold``, it stops at its ``hold``-th order; ``extra``: more ``outbox_app``
        arguments."""
        first = self._next_first
        self._next_first += count
        status = self.workdir / f"app-{first}.txt"
        argv = [sys.executable, "-m", "tests.chaos.outbox_app", "--url", self.url,
                "--store-url", self.store_url, "--queue", self.queue, "--ledger",
                str(self.ledger), "--status", str(status), "--first", str(first), "--count",
                str(count), "--rollback", str(self.rollback), "--seed", str(self.seed),
                "--pause-s", str(pause_s), *extra]
        if hold is not None:
            argv += ["--hold", str(first + hold), "--hold-at", hold_at]
        status.touch()
        proc = subprocess.Popen(argv, cwd=str(ROOT), env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        app = App(proc, status, first, count)
        self._apps.append(proc)
        return app

    def kill_app_at_hold(self, app: App) -> int:
        """Wait until ``app`` holds, ``kill -9`` it; returns the order it held."""
        proc = app.proc
        wait_until(lambda: proc.poll() is not None or "holding" in app.status.read_text(), 60,
                   what="the application reaching its hold")
        held = [line.split() for line in app.status.read_text().splitlines()
                if line.startswith("holding")]
        if proc.poll() is not None or not held:
            _, err = proc.communicate()
            raise AssertionError(f"the application exited {proc.returncode}: {err.decode()}")
        proc.kill()
        proc.communicate()
        _, n, where = held[0]
        self.history.fault(f"application kill -9 {where}", n, (proc.pid,))
        self.attempted += int(n) - app.first + 1
        return int(n)

    def wait_app(self, app: App, timeout: float = 120.0) -> None:
        """Wait for ``app`` to place all its orders; it must exit 0."""
        _, err = app.proc.communicate(timeout=timeout)
        if app.proc.returncode != 0:
            self.problems.append(f"application exited {app.proc.returncode}: "
                                 f"{err.decode()[-2000:]}")
        self.attempted += app.count

    # -- after the faults ----------------------------------------------------------------

    def outbox_counts(self) -> tuple[int, int]:
        store = open_store(self.store_url)
        try:
            return store.counts()
        finally:
            store.close()

    def _nothing_queued(self) -> bool:
        return self.outbox_counts()[0] == 0 and super()._nothing_queued()

    def settle(self, timeout: float = 90.0) -> dict[int, str]:
        """The applications are done: what committed must run, and the outbox drain.

        Returns the committed orders (number -> task id).
        """
        committed = committed_orders(self.store_url)
        numbers = sorted(committed)
        self.history.sent(numbers, [committed[n] for n in numbers])
        self.history.note(f"{self.attempted} orders placed, {len(committed)} committed, "
                          f"{self.attempted - len(committed)} rolled back or killed before "
                          "commit")
        self.producer_done.set()
        self.drain(timeout=timeout, settled_s=20.0)
        with contextlib.suppress(AssertionError):
            wait_until(lambda: self.outbox_counts()[0] == 0, 30, what="the outbox draining")
        self.stop_relays()
        waiting, rejected = self.outbox_counts()
        if waiting or rejected:
            self.problems.append(f"the outbox did not drain: {waiting} rows waiting, "
                                 f"{rejected} rejected")
        return committed

    def verdict(self) -> Verdict:
        """The chaos verdict, after checking that no order that did not commit ran."""
        ran = ledger_numbers(self.ledger)
        phantoms = sorted(ran - set(self.history.confirmed))
        if phantoms:
            self.problems.append(f"{len(phantoms)} order(s) that never committed ran: "
                                 f"{phantoms[:20]}")
        return super().verdict()

    def check_claims(self, disjoint: bool) -> Claims:
        """Two claims of one row are allowed only after its relay was killed holding it
        (or, unless ``disjoint``, after a failed publish handed it back)."""
        claims = Claims(self.journals)
        twice = claims.claimed_more_than_once()
        if disjoint and twice:
            self.problems.append(f"{len(twice)} rows claimed more than once with no relay "
                                 f"killed: e.g. {list(twice.items())[:3]}")
        rows_by_relay = Counter(pid for pids in claims.by_task.values() for pid in pids)
        self.history.note(f"{claims.claims} claims by {len(self.journals)} relay(s) (rows per "
                          f"relay: {sorted(rows_by_relay.values())}); {len(twice)} row(s) "
                          "claimed more than once")
        return claims

    def explain(self, verdict: Verdict) -> str:
        """Each duplicate's source, from the ledger and the relays' claim journals."""
        claims = Claims(self.journals)
        killed = set(claims.dying)
        sources: Counter[str] = Counter()
        firsts: dict[int, str] = {}
        for run in sorted(read_ledger(self.ledger), key=lambda r: r.at):
            if run.n not in firsts:
                firsts[run.n] = run.message_id
                continue
            if run.redelivered == 1:
                sources[REDELIVERED] += 1
            elif run.message_id != firsts[run.n]:
                sources["sent twice by the application (a new message for the same order)"] += 1
            elif not self.journals:
                sources[NO_JOURNAL] += 1
            else:
                pids = claims.by_task.get(run.message_id, [])
                if len(pids) <= 1:
                    sources[REPUBLISHED_ONE_CLAIM] += 1
                elif any(pid in killed for pid in pids[:-1]):
                    sources[RELAY_KILLED] += 1
                elif run.message_id in claims.handed_back:
                    sources[REPUBLISHED_AFTER_FAILURE] += 1
                else:
                    sources[CLAIMED_TWICE] += 1
        return "; ".join(f"{count} {why}" for why, count in sources.most_common()) or "-"


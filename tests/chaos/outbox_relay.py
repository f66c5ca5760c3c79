"""A relay process for the outbox chaos scenarios: ``taskwarren relay`` with a journal and
switches to die at a chosen moment.

``python -m tests.chaos.outbox_relay --url U --store-url S --journal J`` runs the real
relay (:func:`taskwarren.relays.relay_for`, :meth:`Relay.run`) until SIGTERM. It wraps
four calls, nothing else:

- every claim appends ``claim PID task_id ..`` to the journal (the checker attributes
  duplicates to the relay that held a row, and proves two relays claimed disjoint rows),
  and so do a failed DELETE (``undeleted``) and a hand-back after a failed publish
  (``released``): both let the rows be published again;
- ``--die-at publish --die-on K`` SIGKILLs the process inside its K-th publish, a random
  0 to ``--die-within-ms`` ms after the publish began (0: before a byte is sent), so it
  dies with part or all of a batch on the broker and none of it deleted;
- ``--die-at delete --die-on K`` SIGKILLs it at its K-th delete, after the broker
  confirmed the batch and before the DELETE: the rows stay, their lease runs out, and
  another relay publishes them again under the same message id.

``--lease-s`` shortens the claim lease (60 s in production) so that a killed relay's
rows come back within the test; ``--batch`` makes claims smaller (500 rows).
``--sabotage delete-first`` deletes the claimed rows before publishing them (the bug an
outbox must not have): with ``--die-at publish`` the checker must report them lost.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import threading
import time
from collections.abc import Sequence

from taskwarren import Warren
from taskwarren.errors import StoreError
from taskwarren.message import Envelope
from taskwarren.relays import relay_for
from taskwarren.store.database import Row
from tests.chaos.outbox_app import status


def die(journal: str, why: str) -> None:
    status(journal, f"dying {os.getpid()} {why}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--store-url", required=True)
    parser.add_argument("--journal", required=True)
    parser.add_argument("--lease-s", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=0, help="rows per claim (0: the default)")
    parser.add_argument("--die-at", choices=("publish", "delete"))
    parser.add_argument("--die-on", type=int, default=1)
    parser.add_argument("--die-within-ms", type=float, default=5.0)
    parser.add_argument("--sabotage", choices=("delete-first",))
    parser.add_argument("--seed", default="0")
    parser.add_argument("--publish-timeout-s", type=float, default=30.0)
    args = parser.parse_args()
    rng = random.Random(f"{args.seed}-{os.getpid()}")
    app = Warren(url=args.url, store_url=args.store_url,
                 publish_timeout_s=args.publish_timeout_s)
    relay = relay_for(app)
    relay.lease_s = args.lease_s
    relay.batch = args.batch or relay.batch
    store = relay.store
    real_claim, real_delete, real_release = store.claim, store.delete, store.release
    real_publish = relay.publish
    calls = {"publish": 0, "delete": 0}
    task_ids: dict[int, str] = {}

    def note(kind: str, ids: Sequence[int]) -> None:
        status(args.journal, f"{kind} {os.getpid()} {' '.join(task_ids[i] for i in ids)}\n")

    def claim(limit: int, lease_s: float) -> list[Row]:
        rows = real_claim(limit, lease_s)
        if rows:
            task_ids.update((r.id, r.task_id) for r in rows)
            note("claim", [r.id for r in rows])
            if args.sabotage == "delete-first":
                real_delete([r.id for r in rows])
        return rows

    def delete(ids: Sequence[int]) -> None:
        if ids:
            calls["delete"] += 1
            if args.die_at == "delete" and calls["delete"] == args.die_on:
                die(args.journal, "before-delete")
        try:
            real_delete(ids)
        except StoreError:
            note("undeleted", ids)  # published, but left for the lease to run out
            raise

    def release(ids: Sequence[int], retry_at: float) -> None:
        note("released", ids)  # the publish failed: taken again from retry_at on
        real_release(ids, retry_at)

    def publish(queue: str, envelopes: Sequence[Envelope], delay_s: float) -> None:
        calls["publish"] += 1
        if args.die_at == "publish" and calls["publish"] == args.die_on:
            within_s = rng.uniform(0, args.die_within_ms) / 1000
            if within_s <= 0:
                die(args.journal, "before-publish")
            confirmed = threading.Event()

            def kill() -> None:
                die(args.journal, "after-confirm" if confirmed.is_set() else "mid-publish")

            threading.Timer(within_s, kill).start()
            real_publish(queue, envelopes, delay_s)
            confirmed.set()
            time.sleep(5)  # the timer fires here if the publish finished first
            return
        real_publish(queue, envelopes, delay_s)

    store.claim = claim  # type: ignore[method-assign]
    store.delete = delete  # type: ignore[method-assign]
    store.release = release  # type: ignore[method-assign]
    relay.publish = publish
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    status(args.journal, f"started {os.getpid()}\n")
    try:
        relay.run(stop)
    finally:
        store.close()
        app.close()
    status(args.journal, f"stopped {os.getpid()} relayed {relay.relayed}\n")


if __name__ == "__main__":
    main()

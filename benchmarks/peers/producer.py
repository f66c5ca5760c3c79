"""A producer process for one system, driven line by line over stdin by compare.py.

``python producer.py MODULE`` imports ``MODULE`` (one of the peer apps here) and makes
its ``Producer``. Commands, one per line; each answers one JSON line on stdout:

* ``send``: stamp ``sent = time.monotonic()`` just before the publish call, send one
  task carrying it (confirmed); answers ``{}``.
* ``warm N``: send N warm-up tasks (``sent = -1``).
* ``fill N``: queue N tasks the quickest way the system has (untimed).
* ``time_send N`` / ``time_send_many N``: the seconds N confirmed sends take, one call
  each / in one batched call (``{"seconds": null}`` if the system has no batched call
  that waits for confirms).
"""

from __future__ import annotations

import importlib
import json
import sys
import time


def main() -> None:
    """Serve commands until stdin closes."""
    producer = importlib.import_module(sys.argv[1]).Producer()
    out = sys.stdout
    try:
        for line in sys.stdin:
            cmd, _, arg = line.strip().partition(" ")
            reply: dict[str, object] = {}
            if cmd == "send":
                producer.send(time.monotonic())
            elif cmd == "warm":
                for _ in range(int(arg)):
                    producer.send(-1.0)
            elif cmd == "fill":
                producer.fill(int(arg))
            elif cmd == "time_send":
                producer.send(-1.0)  # connection and declarations, untimed
                t0 = time.monotonic()
                for _ in range(int(arg)):
                    producer.send(0.0)
                reply["seconds"] = time.monotonic() - t0
            elif cmd == "time_send_many":
                if producer.send_many is None:
                    reply["seconds"] = None
                else:
                    producer.send(-1.0)
                    t0 = time.monotonic()
                    producer.send_many(int(arg))
                    reply["seconds"] = time.monotonic() - t0
            else:
                reply["error"] = f"unknown command {cmd!r}"
            out.write(json.dumps(reply) + "\n")
            out.flush()
    finally:
        producer.close()


if __name__ == "__main__":
    main()

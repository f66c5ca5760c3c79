"""taskwarren: the module its worker loads (``taskwarren worker tw_app``) and a producer.

taskwarren's defaults (confirms always on, pydantic validation, late coalesced acks,
adaptive prefetch), on a queue of the type asked for.
"""

from __future__ import annotations

import marks

from taskwarren import Warren

QUEUE = marks.queue_name("twbench_taskwarren_classic")

app = Warren(url=marks.url(), queue_type=marks.queue_type())


@app.task(queue=QUEUE, name="bench.noop")
def noop(sent: float = 0.0) -> None:
    """The benchmark body."""
    marks.started(sent)


class Producer:
    """``.send()`` (confirmed) and ``.send_many()`` (pipelined confirms)."""

    def send(self, sent: float) -> None:
        """One confirmed send."""
        noop.send(sent)

    def send_many(self, n: int) -> None:
        """``n`` sends in one call."""
        noop.send_many([{"sent": 0.0}] * n)

    fill = send_many

    def close(self) -> None:
        """Close the app's connections."""
        app.close()

"""Live worker pools, grouped from the announcements their processes make (presence).

Every worker child announces itself about once a second (see
:class:`~taskwarren.brokers.capabilities.Announcer`); :func:`live_pools` listens, and groups
what it heard by pool (host and supervisor pid). ``taskwarren workers`` and the
dashboard's workers page both show this.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from taskwarren.brokers.base import Broker
from taskwarren.brokers.capabilities import Presence, require

__all__ = ["group_pools", "live_pools"]


def live_pools(broker: Broker, listen_s: float) -> list[dict[str, Any]]:
    """The pools announcing themselves on ``broker`` during ``listen_s`` seconds.

    Raises:
        NotSupportedError: the broker has no presence.
        BrokerError: it cannot be reached.
    """
    heard = require(broker, Presence, "worker discovery").presence(listen_s)
    return group_pools(heard, time.time())


def group_pools(heard: Iterable[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """Announcements grouped by pool, by host then pid.

    Each pool is a dict: ``host``, ``pid`` (the supervisor's), ``children`` (how many
    announced), ``queues`` (sorted), ``in_flight`` (the children's latest counts, summed)
    and ``uptime_s`` (since its oldest child started, to 0.1 s).
    """
    pools: dict[tuple[str, int], dict[str, Any]] = {}
    for info in heard:
        key = (str(info["host"]), int(info["pool_pid"]))
        pool = pools.setdefault(key, {"host": key[0], "pid": key[1], "children": {},
                                      "queues": set(), "started_at": now})
        pool["children"][info["pid"]] = int(info["in_flight"])  # the latest wins
        pool["queues"].update(str(q) for q in info["queues"])
        pool["started_at"] = min(pool["started_at"], float(info["started_at"]))
    rows = [{"host": p["host"], "pid": p["pid"], "children": len(p["children"]),
             "queues": sorted(p["queues"]), "in_flight": sum(p["children"].values()),
             "uptime_s": round(now - p["started_at"], 1)} for p in pools.values()]
    rows.sort(key=lambda r: (r["host"], r["pid"]))
    return rows

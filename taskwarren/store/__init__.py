"""The job store: taskwarren's tables in the application's own database.

``task.options(db=conn).send(...)`` writes an outbox row in the caller's transaction
(:mod:`taskwarren.store.outbox`); a relay (:mod:`taskwarren.store.relay`) publishes
committed rows, confirmed, and deletes them. ``TASKWARREN_STORE_URL`` tells relays and
``taskwarren store init`` where the tables are (:mod:`taskwarren.store.database`).
The store knows rows and envelopes, never an app: :mod:`taskwarren.relays` wires a
relay to an app's settings, broker and tasks.
"""

from __future__ import annotations

from taskwarren.store.database import Store, open_store
from taskwarren.store.relay import Relay, RowSource
from taskwarren.store.schema import ddl

__all__ = ["Relay", "RowSource", "Store", "ddl", "open_store"]

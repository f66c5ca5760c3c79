"""Relays wired to an app: its job store, its broker, its tasks.

The store (:mod:`taskwarren.store`) knows rows and envelopes, never an app; here a
:class:`~taskwarren.store.relay.Relay` gets the app's store URL, its settings (lease,
size limit) and a publish that declares the queue and publishes through the app's broker.
``taskwarren worker`` runs :func:`run_relay` beside its pool; ``taskwarren relay`` alone.
When the app records jobs, it also runs :func:`run_projector`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import structlog

from taskwarren.app import Warren
from taskwarren.errors import ConfigurationError, TaskwarrenError, UnknownTaskError
from taskwarren.message import MAX_ECHO_CHARS, Envelope, clip
from taskwarren.store import Store, open_store
from taskwarren.store.job_table import JobTable
from taskwarren.store.legacy import LegacySource, LegacyTable
from taskwarren.store.projector import Projector
from taskwarren.store.relay import Relay, RowSource
from taskwarren.urls import mask_url

__all__ = ["legacy_relay_for", "open_app_store", "relay_for", "run_projector", "run_relay"]

log = structlog.get_logger("taskwarren.relay")


def relay_for(app: Warren, store: RowSource | None = None) -> Relay:
    """A relay from ``store`` (default: ``app``'s outbox) to ``app``'s broker.

    Raises:
        ConfigurationError: no store is configured.
        StoreError: the store cannot be reached.
    """
    if store is None:
        own = open_app_store(app)
        try:
            if own.dialect == "sqlite" and app.settings.store_url is None:
                own.init()  # the embedded store makes its tables itself
            own.check()
        except BaseException:
            own.close()
            raise
        store = own

    def publish(queue: str, envelopes: Sequence[Envelope], delay_s: float) -> None:
        chain = app.middleware  # read per batch: middleware may be added after this
        hooked = chain.uses("before_relay") or chain.uses("after_relay")
        if hooked:
            for envelope in envelopes:
                chain.before_relay(envelope)
        try:
            app.declare([queue])
            app.broker.publish(queue, envelopes, delay_s)
        except BaseException as exc:
            if hooked:
                for envelope in envelopes:
                    chain.after_relay(envelope, exc)
            raise
        if hooked:
            for envelope in envelopes:
                chain.after_relay(envelope, None)

    lease_s = max(60.0, 2 * app.settings.publish_timeout_s + 10.0)
    return Relay(store, publish, max_bytes=app.settings.max_message_bytes, lease_s=lease_s)


def open_app_store(app: Warren) -> Store:
    """A connection of its own to ``app``'s job store.

    Raises:
        ConfigurationError: no store is configured.
        StoreError: the store cannot be reached.
    """
    url = app.settings.effective_store_url
    if url is None:
        raise ConfigurationError("no job store: set TASKWARREN_STORE_URL (or use the "
                                 "embedded SQLite broker, whose file holds one)")
    return open_store(url, app.settings.connect_timeout_s)


def run_relay(app: Warren, stop: threading.Event) -> None:
    """Relay ``app``'s outbox until ``stop`` is set, then close the store connection."""
    relay = relay_for(app)
    log.info("relay.started", store=relay.store.location, broker=app.broker_location,
             pid=os.getpid())
    try:
        relay.run(stop)
    finally:
        relay.store.close()


def run_projector(app: Warren, stop: threading.Event) -> None:
    """Apply ``app``'s job events to its job store until ``stop`` is set."""
    settings = app.settings
    url = settings.effective_store_url
    if url is None:
        raise ConfigurationError("no job store: set TASKWARREN_STORE_URL")

    def table() -> JobTable:
        assert url is not None
        return JobTable(open_store(url, settings.connect_timeout_s))

    projector = Projector(app.broker, table, settings.job_retention_s,
                          settings.jobs_events_queue)
    log.info("projector.started", store=mask_url(url), broker=app.broker_location,
             pid=os.getpid())
    projector.run(stop)


def legacy_relay_for(app: Warren, table: LegacyTable, store: Store | None = None) -> Relay:
    """A relay from ``table`` (in ``app``'s job store database) to ``app``'s broker.

    Each row's task must be registered on ``app``, and its arguments must fit the task's
    signature; otherwise the row is set to ``failed`` with the reason. Creates
    :data:`LEASES` if it is missing.

    Raises:
        ConfigurationError: no store is configured, or the table is not as configured.
        StoreError: the database cannot be reached.
    """

    def resolve(name: str, body: bytes) -> str:
        task = app.tasks.get(name)
        if task is None:
            raise UnknownTaskError(f"no task named {clip(name, MAX_ECHO_CHARS)!r} is registered")
        task.decode_call(body)
        return task.queue

    source = LegacySource(store or open_app_store(app), table, resolve)
    try:
        source.prepare()
    except TaskwarrenError:
        source.close()
        raise
    return relay_for(app, source)

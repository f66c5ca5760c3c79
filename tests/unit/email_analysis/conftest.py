"""Fixtures for the email analysis tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from taskwarren.app import Warren
from workers.email_analysis import store, tasks


@pytest.fixture
def taskwarren_app() -> Warren:
    """The app the pipeline's tasks are registered with: the one ``taskwarren_memory``
    (taskwarren's pytest plugin) switches to the in-memory broker."""
    return tasks.ingest.app  # type: ignore[return-value]


@pytest.fixture(autouse=True)
def _close_default_stores() -> Iterator[None]:
    """Stores opened through EMAIL_ANALYSIS_DB in a test are closed after it."""
    yield
    store.close_default_stores()

"""Fixtures for the email analysis tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from workers.email_analysis import store


@pytest.fixture(autouse=True)
def _close_default_stores() -> Iterator[None]:
    """Stores opened through EMAIL_ANALYSIS_DB in a test are closed after it."""
    yield
    store.close_default_stores()

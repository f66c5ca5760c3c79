"""taskwarren's pytest plugin: run an existing app's tasks on the in-memory broker.

pytest loads it through the ``pytest11`` entry point wherever taskwarren is installed.
Importing it defines two fixtures and does nothing else (no app is built, no broker
reached, no environment read): :mod:`taskwarren.testing` is imported when a fixture is
first used.

``taskwarren_memory`` switches ``taskwarren_app`` (by default the app of ``@task``) to a
fresh in-memory broker for the test and back after it::

    def test_signup_sends_the_welcome_mail(taskwarren_memory):
        signup("ada@example.com")                       # calls send_welcome.send(...)
        [result] = taskwarren_memory.run()              # runs it as a worker would
        assert result.outcome == "succeeded"

To switch your own app, override ``taskwarren_app`` in a ``conftest.py``::

    @pytest.fixture
    def taskwarren_app():
        return myproject.tasks.app
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from taskwarren.app import Warren
    from taskwarren.testing import InMemory


@pytest.fixture
def taskwarren_app() -> Warren:
    """The app ``taskwarren_memory`` switches: the default app, which ``@task`` registers
    with. Override this fixture to name your own :class:`~taskwarren.Warren`."""
    from taskwarren.app import default_app

    return default_app()


@pytest.fixture
def taskwarren_memory(taskwarren_app: Warren) -> Iterator[InMemory]:
    """``taskwarren_app`` on a fresh in-memory broker for this test, its own broker after.

    Yields a :class:`~taskwarren.testing.InMemory`: ``.run()`` runs what was sent
    through the worker's executor (retries and dead letters included, delays skipped)
    and re-raises a failure; ``.dead_letters(queue)`` and ``.waiting(queue)`` show what
    is left.
    """
    from taskwarren.testing import in_memory

    with in_memory(taskwarren_app) as queues:
        yield queues

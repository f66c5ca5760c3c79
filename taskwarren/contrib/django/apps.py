"""The Django app of taskwarren: it brings the ``taskwarren_worker`` management command."""

from __future__ import annotations

from django.apps import AppConfig


class TaskwarrenConfig(AppConfig):  # type: ignore[misc]  # Django ships no type hints
    """``taskwarren.contrib.django`` in INSTALLED_APPS."""

    name = "taskwarren.contrib.django"
    label = "taskwarren"
    verbose_name = "taskwarren"

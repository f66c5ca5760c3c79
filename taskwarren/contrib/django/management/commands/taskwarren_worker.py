"""``python manage.py taskwarren_worker MODULES [options]``: a worker pool in this project.

Everything after the command's name goes to ``taskwarren worker`` (``-c``, ``-Q``,
``--threads``, ...: see ``taskwarren worker --help``); Django's own options come first.
"""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand
from django.db import connections

from taskwarren.cli import main

#: Added to every pool started this way.
MIDDLEWARE = "taskwarren.contrib.django.middleware:CloseOldConnections"


class Command(BaseCommand):  # type: ignore[misc]  # Django ships no type hints
    """Run ``taskwarren worker`` with Django set up and stale connections closed."""

    help = ("Run a taskwarren worker pool for the tasks in MODULES, with this project's "
            "settings; the arguments are those of `taskwarren worker`.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Take the worker's arguments as they are."""
        parser.add_argument("worker_args", nargs=argparse.REMAINDER, metavar="MODULES ...",
                            help="the arguments of `taskwarren worker`")

    def handle(self, *args: Any, worker_args: list[str], **options: Any) -> None:
        """Start the pool; returns (by ``SystemExit``) with its exit code."""
        # The pool forks its children: a connection open here would be shared by all.
        connections.close_all()
        main.main(args=["worker", *worker_args, "--middleware", MIDDLEWARE],
                  prog_name="manage.py taskwarren_worker")

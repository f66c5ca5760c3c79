"""Loading what the command line names: task modules (and their app) and middleware."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

import click

from taskwarren import app as app_module
from taskwarren.app import Warren
from taskwarren.middleware import Middleware


def load_app(modules: Sequence[str], url: str | None) -> Warren:
    """Import ``modules`` and return the app their tasks belong to.

    A module may define its own :class:`Warren`; otherwise module-level ``@task``
    functions belong to the default app.

    Raises:
        click.UsageError: no tasks found, or tasks spread over several apps.
    """
    sys.path.insert(0, os.getcwd())
    if url:
        os.environ["TASKWARREN_URL"] = url
    found: list[Warren] = []
    for name in modules:
        module = importlib.import_module(name)
        for value in vars(module).values():
            if isinstance(value, Warren) and value.tasks and value not in found:
                found.append(value)
    default = app_module._default_app
    if default is not None and default.tasks and default not in found:
        found.append(default)
    if not found:
        raise click.UsageError(f"no tasks found in {', '.join(modules)}")
    if len(found) > 1:
        raise click.UsageError("tasks belong to several apps; run one worker per app")
    app = found[0]
    if url and app.settings.url != url:
        app.settings = app.settings.replace(url=url)
    return app


def load_middleware(spec: str) -> Middleware:
    """The middleware ``module:name`` names: an instance, or a class made with no arguments.

    Raises:
        click.BadParameter: the name cannot be imported or is no middleware.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise click.BadParameter(f"{spec!r}: give module:name, e.g. myapp.audit:Audit",
                                 param_hint="--middleware")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise click.BadParameter(f"{spec!r}: {exc}", param_hint="--middleware") from None
    if isinstance(found, type) and issubclass(found, Middleware):
        found = found()
    if not isinstance(found, Middleware):
        raise click.BadParameter(f"{spec!r} is not a taskwarren.Middleware (class or instance)",
                                 param_hint="--middleware")
    return found

"""Loading what the command line names: task modules (and their app), middleware, and
the logging options of long-running commands."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from taskwarren import app as app_module
from taskwarren.app import Warren
from taskwarren.logs import LEVELS, configure, yield_to_app
from taskwarren.middleware import Middleware

F = TypeVar("F", bound=Callable[..., Any])

#: Where the logging options given so far are kept, in click's ``ctx.meta``.
_LOG_META = "taskwarren.logging"


def _log_option(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    # Options given to the group and to the command add up; the command's win.
    chosen: dict[str, str] = ctx.meta.setdefault(_LOG_META, {})
    if value is not None:
        chosen[str(param.name)] = value
    configure(chosen.get("log_format"),  # type: ignore[arg-type]
              chosen.get("log_level", "INFO"))


def log_options(command: F) -> F:
    """Add ``--log-format`` and ``--log-level`` to a command (the group takes them too)."""
    command = click.option(
        "--log-level", type=click.Choice(LEVELS, case_sensitive=False), default=None,
        expose_value=False, callback=_log_option,
        help="Lowest level written (default: INFO).")(command)
    return click.option(
        "--log-format", type=click.Choice(["json", "console"]), default=None,
        expose_value=False, callback=_log_option,
        help="JSON lines, or colour for a terminal (default: console when stderr is a "
             "terminal, else json).")(command)


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
    yield_to_app()  # the modules' own logging handlers, if they set any up, win
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

"""Logging: structlog events handed to stdlib ``logging``, whose handlers the application owns.

taskwarren writes structlog events (``task.retried`` with keyword fields). With
:func:`route_to_logging` they become stdlib records of the loggers ``taskwarren.*``,
so the handlers, levels and filters an application sets up get them like its own
lines. A record's message renders as ``event key=value ...`` for a plain
``logging.Formatter``; :func:`formatter` renders taskwarren's records and everyone
else's alike, as JSON lines or for a terminal.

Library code never configures logging. The ``taskwarren`` command does, once, with
:func:`configure` (one handler on the root logger, which steps aside with
:func:`yield_to_app` when the application's modules installed their own), and every
line it writes has broker and database passwords masked, tracebacks included.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

LogFormat = Literal["auto", "json", "console"]

#: The levels ``--log-level`` takes.
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: The name of the root handler :func:`configure` installs (and replaces when called again).
HANDLER_NAME = "taskwarren"

#: ``scheme://user:password@``: the password of a URL, in any text we write.
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*):[^\s@/]*@")

#: structlog's configuration object (private; ``None`` in a structlog without one).
_STRUCTLOG_CONFIG = getattr(getattr(structlog, "_config", None), "_CONFIG", None)
#: Whether a structlog wrapper class writes debug lines, by class (see :func:`debug_enabled`).
_debug_by_wrapper: dict[type, bool] = {}


def debug_enabled() -> bool:
    """Whether ``debug`` lines are written under structlog's configuration right now.

    Asking is far cheaper than a ``log.debug()`` that is filtered out: an uncached
    structlog logger binds itself anew on every call (about 2.5 us; loggers stay
    uncached so that an application may configure structlog after us). A wrapper class
    that cannot say (not a filtering one) counts as writing them.
    """
    # structlog's get_config() builds a dict on every call (2 us, three times a task):
    # its configuration object is read directly where this structlog has one.
    wrapper = getattr(_STRUCTLOG_CONFIG, "default_wrapper_class", None)
    if wrapper is None:
        wrapper = structlog.get_config()["wrapper_class"]
    enabled = _debug_by_wrapper.get(wrapper)
    if enabled is None:
        check = getattr(wrapper, "is_enabled_for", None)
        try:
            enabled = bool(check(None, logging.DEBUG)) if check is not None else True
        except Exception:  # a wrapper whose method needs a real instance
            enabled = True
        _debug_by_wrapper[wrapper] = enabled
    return enabled


def mask_passwords(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` in it masked."""
    return _URL_PASSWORD.sub(r"\1:***@", text) if "://" in text else text


class _Event(dict[str, Any]):
    """A structlog event as a record's message: a dict to :func:`formatter`, and
    ``event key=value ...`` (passwords masked) to any other formatter."""

    def __str__(self) -> str:
        fields = " ".join(f"{k}={v!r}" for k, v in self.items()
                          if k not in ("event", "timestamp", "level", "exc_info"))
        return mask_passwords(f"{self.get('event', '')} {fields}".rstrip())


def _to_record(logger: Any, method: str, event: MutableMapping[str, Any]
               ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The last processor: hand the event to the stdlib logger as a record."""
    exc_info = event.get("exc_info")
    if exc_info is True:
        exc_info = sys.exc_info()
        event["exc_info"] = exc_info
    kwargs: dict[str, Any] = {"extra": {"_logger": logger, "_name": method}}
    if exc_info:
        kwargs["exc_info"] = exc_info  # a plain formatter prints it; ours renders it itself
    return (_Event(event),), kwargs


def route_to_logging(level: str | int = "INFO") -> None:
    """Send structlog's events (taskwarren's and the application's) to stdlib ``logging``.

    Installs no handler: those the application set up receive the records. Call it once
    at start-up, instead of a ``structlog.configure`` of your own.

    Args:
        level: events below it are dropped before they cost anything (name or number).
    """
    numeric = level if isinstance(level, int) else logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            _to_record,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )


class _Masked:
    """A renderer whose output has URL passwords masked (tracebacks included)."""

    def __init__(self, renderer: Any) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
        return mask_passwords(str(self.renderer(logger, method, event)))


def formatter(log_format: Literal["json", "console"]) -> logging.Formatter:
    """A formatter for any handler: taskwarren's records and the application's alike.

    Args:
        log_format: one JSON object per line, or colour for a terminal.
    """
    use_json = log_format == "json"
    renderer = (structlog.processors.JSONRenderer() if use_json
                # Plain tracebacks: rich's (used when it is installed) print every frame's
                # local variables, and a local may hold a broker password.
                else structlog.dev.ConsoleRenderer(
                    exception_formatter=structlog.dev.plain_traceback))
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.add_logger_name,  # from the record: before its removal
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *([structlog.processors.format_exc_info] if use_json else []),
            _Masked(renderer),
        ],
    )


def choose_format(log_format: LogFormat | None) -> Literal["json", "console"]:
    """``json`` or ``console``; ``auto`` (or none): console when stderr is a terminal."""
    if log_format in ("json", "console"):
        return log_format
    return "console" if sys.stderr.isatty() else "json"


def configure(log_format: LogFormat | None = None, level: str = "INFO") -> None:
    """Set up logging for a ``taskwarren`` command (never called by library code).

    Routes structlog through stdlib logging and puts one stderr handler, with
    :func:`formatter`, on the root logger (replacing the one an earlier call put
    there), so that taskwarren's lines and every library's share one format.

    Args:
        log_format: ``json`` lines, ``console`` colour, or ``auto``/``None`` (console
            on a terminal).
        level: minimum level name.
    """
    numeric = logging.getLevelName(level.upper())
    route_to_logging(numeric)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(formatter(choose_format(log_format)))
    root.addHandler(handler)
    root.setLevel(numeric)
    logging.getLogger("amqp").setLevel(max(numeric, logging.WARNING))


def yield_to_app() -> bool:
    """Remove :func:`configure`'s handler if the application's modules put handlers of
    their own on the root logger (theirs then receive every line); whether it did."""
    root = logging.getLogger()
    ours = [h for h in root.handlers if h.get_name() == HANDLER_NAME]
    if not ours or len(ours) == len(root.handlers):
        return False
    for handler in ours:
        root.removeHandler(handler)
    return True

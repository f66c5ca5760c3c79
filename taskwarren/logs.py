"""structlog set-up: JSON lines off a terminal, readable colour on one."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LogFormat = Literal["auto", "json", "console"]

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


def configure(log_format: LogFormat = "auto", level: str = "INFO") -> None:
    """Configure structlog (and the stdlib root logger) for a process.

    Args:
        log_format: ``json`` lines, ``console`` colour, or ``auto`` (console on a TTY).
        level: minimum level name.
    """
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if use_json
        # Plain tracebacks: rich's (used when it is installed) print every frame's local
        # variables, and a local may hold a broker password.
        else structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    )
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info
            if use_json
            else structlog.processors.StackInfoRenderer(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(
        level=numeric, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("amqp").setLevel(logging.WARNING)

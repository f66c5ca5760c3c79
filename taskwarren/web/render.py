"""Templates and assets, read from the package with :mod:`importlib.resources`.

Jinja2 autoescapes every template (whatever its name), so text from a message is
always markup-escaped; the ``visible`` filter also turns control and format characters
(escape sequences, bidirectional overrides, zero-width characters) into visible escapes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from jinja2 import Environment, FunctionLoader, StrictUndefined

from taskwarren.text import printable, short_time

__all__ = ["ASSETS", "asset", "environment", "pretty_json"]

#: The static files served under ``/static/``, with their content types.
ASSETS = {"dashboard.css": "text/css; charset=utf-8",
          "dashboard.js": "text/javascript; charset=utf-8"}
#: The longest JSON text :func:`pretty_json` indents (longer is shown as it is).
MAX_PRETTY_CHARS = 1024 * 1024


def _template(name: str) -> str | None:
    if "/" in name or "\\" in name or not name.endswith(".html"):
        return None
    path = resources.files("taskwarren.web").joinpath("templates", name)
    return path.read_text(encoding="utf-8") if path.is_file() else None


def asset(name: str) -> bytes | None:
    """The bytes of static file ``name`` (one of :data:`ASSETS`), or ``None``."""
    if name not in ASSETS:
        return None
    return resources.files("taskwarren.web").joinpath("static", name).read_bytes()


#: ``at`` (seconds since the epoch) as ``2026-12-07 10:00:00`` UTC, or ``-``.
when = short_time


def iso(at: float | None) -> str:
    """``at`` as ISO-8601 in UTC, or ``""``."""
    return "" if at is None else datetime.fromtimestamp(at, UTC).isoformat()


def dash(value: object) -> object:
    """``-`` for ``None``, else the value."""
    return "-" if value is None else value


def rate(value: float | None) -> str:
    """A rate per second to one decimal, or ``-`` when unknown."""
    return "-" if value is None else f"{value:.1f}/s"


def pretty_json(text: str | None) -> str:
    """``text`` indented if it is JSON (and not huge), else as it is (``-`` for none)."""
    if text is None:
        return "-"
    if len(text) > MAX_PRETTY_CHARS:
        return text
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except Exception:  # not JSON, or nested deeper than the decoder goes
        return text


def visible(text: object, width: int | None = None) -> str:
    """``text`` with control and invisible characters shown as escapes, newlines kept."""
    return printable(text, width, lines=True)


def environment() -> Environment:
    """The Jinja2 environment of the dashboard's templates."""
    env = Environment(loader=FunctionLoader(_template), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(when=when, iso=iso, dash=dash, rate=rate, pretty_json=pretty_json,
                       visible=visible)
    return env


def render(env: Environment, template: str, /, **context: Any) -> str:
    """Template ``template`` rendered with ``context``."""
    return env.get_template(template).render(**context)

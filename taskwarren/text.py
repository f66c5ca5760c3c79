"""Text from messages made safe to show: escape sequences and invisible characters as escapes.

Everything a message carries (task names, arguments, errors, tracebacks) may be written by
an attacker. On a terminal an escape sequence could rewrite the screen; in a browser a
bidirectional override could make one name read as another. :func:`printable` shows such
characters as visible escapes (``\\x1b[2J``, ``\\u202e``), never raw.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime

__all__ = ["printable", "short_time"]

#: ANSI escape sequences: CSI (``ESC [ ... final``), OSC (``ESC ] ... BEL or ESC \\``),
#: and any other two-character escape.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b.?")
#: Unicode categories never printed raw: controls, format characters (bidi overrides,
#: zero-width characters), surrogates, private use, line and paragraph separators.
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})


def printable(text: object, width: int | None = None, *, lines: bool = False) -> str:
    """``text`` safe for a terminal: escape sequences and control characters shown as
    escapes (``\\x1b[2J``), whitespace controls as a space (a newline kept when ``lines``),
    cut to ``width`` characters (ending ``...``) if given."""
    raw = "" if text is None else str(text)
    if width is not None:
        # Escaping never shortens: the first width + 1 characters decide what is shown
        # (and that it is cut), so a huge text costs no more than a short one.
        raw = raw[:width + 1]
    out: list[str] = []
    pos = 0
    for match in _ESCAPES.finditer(raw):
        out.append(_chars(raw[pos:match.start()], lines))
        out.append(match.group().encode("unicode_escape").decode("ascii"))
        pos = match.end()
    out.append(_chars(raw[pos:], lines))
    clean = "".join(out)
    if width is not None and len(clean) > width:
        clean = clean[:max(width - 3, 0)] + "..."
    return clean


def _chars(text: str, lines: bool) -> str:
    out = []
    for ch in text:
        if ch == "\n" and lines:
            out.append(ch)
        elif ch in "\t\n\r\v\f":
            out.append(" ")
        elif unicodedata.category(ch) in _HIDDEN:
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def short_time(at: float | None) -> str:
    """``at`` (seconds since the epoch) as ``2026-12-07 10:00:00`` (UTC), or ``-``."""
    return "-" if at is None else datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")

"""Helpers to write crafted messages in tests."""

from __future__ import annotations

import base64
import textwrap
from datetime import UTC, datetime

#: A fixed clock, so analyses made in tests compare equal.
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

TRUSTED_PASS = (
    "Authentication-Results: mx.taskwarren.test; spf=pass smtp.mailfrom=example.com;"
    " dkim=pass header.d=example.com; dmarc=pass header.from=example.com"
)


def mail(text: str) -> bytes:
    """A message from an indented triple-quoted string (LF line ends, UTF-8)."""
    return textwrap.dedent(text).lstrip("\n").encode("utf-8")


def b64(data: bytes) -> str:
    """Base64 in 76-character lines, as MIME writes it."""
    return base64.encodebytes(data).decode("ascii").rstrip("\n")


def encoded_word(text: str, charset: str) -> str:
    """One RFC 2047 B-encoded word."""
    return f"=?{charset}?B?{base64.b64encode(text.encode(charset)).decode('ascii')}?="


def points(reasons: list[str]) -> int:
    """The sum of the ``+N`` at the end of each reason."""
    return sum(int(reason.rsplit("+", 1)[1]) for reason in reasons)

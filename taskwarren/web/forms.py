"""An action's fields: its body read (capped while it streams) only once the visitor is
known, as a JSON object or an URL-encoded form."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

__all__ = ["MAX_BODY_BYTES", "MAX_IDS", "BadBody", "read_fields"]

#: The most dead-letter ids one request may name.
MAX_IDS = 10_000
#: The largest body an action reads (10,000 ids fit).
MAX_BODY_BYTES = 1024 * 1024


class BadBody(Exception):
    """A body that is refused (too large, not JSON, not a form).

    Args:
        status: the HTTP status to answer.
        reason: why, for the visitor.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body of ``request``, refused as soon as it passes ``limit`` bytes (a declared
    length past it is refused before a byte is read)."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise BadBody(413, "request body too large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadBody(413, "request body too large")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_fields(request: Request) -> dict[str, Any]:
    """The request's fields: a JSON object, or the URL-encoded form (its repeated ``id``
    as the list ``ids``)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("application/json", "application/x-www-form-urlencoded", ""):
        raise BadBody(415, "send a form (application/x-www-form-urlencoded) or JSON")
    body = await read_body(request)
    if kind == "application/json":
        try:
            found = json.loads(body or b"{}")
        except (ValueError, RecursionError):
            raise BadBody(400, "the body is not JSON") from None
        if not isinstance(found, dict):
            raise BadBody(400, "the body is not a JSON object")
        return found
    try:
        pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True,
                          max_num_fields=MAX_IDS + 20)
    except ValueError:
        raise BadBody(413, f"too many fields (at most {MAX_IDS} ids)") from None
    fields: dict[str, Any] = dict(pairs)
    fields["ids"] = [v for k, v in pairs if k == "id"]
    return fields

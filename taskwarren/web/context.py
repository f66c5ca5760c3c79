"""What every route shares: the dashboard's reads, its auth, its templates, and helpers."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar
from urllib.parse import quote

from jinja2 import Environment
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from taskwarren.text import printable
from taskwarren.web.auth import Auth
from taskwarren.web.data import Dashboard
from taskwarren.web.render import render

__all__ = ["Web", "client_of", "path_part"]

P = ParamSpec("P")
T = TypeVar("T")


def path_part(text: str) -> str:
    """``text`` as one path segment (``/`` encoded too)."""
    return quote(text, safe="")


def client_of(request: Request) -> str:
    """The client's address, for the log."""
    return request.client.host if request.client is not None else "-"


def loggable(text: str) -> str:
    """Text from a request or a message as a log field: visible escapes, cut short."""
    return printable(text, 200)


@dataclass
class Web:
    """The dashboard's shared parts.

    Attributes:
        dashboard: the reads.
        auth: sessions and CSRF.
        env: the templates.
    """

    dashboard: Dashboard
    auth: Auth
    env: Environment

    @staticmethod
    def base(request: Request) -> str:
        """The path the dashboard is mounted at (``""`` at the root)."""
        return str(request.scope.get("root_path") or "").rstrip("/")

    def viewer(self, request: Request) -> dict[str, Any]:
        """What the templates know of the visitor: may they act, their CSRF token."""
        session = self.auth.session(request)
        logged_in = session is not None and session.logged_in
        return {"enabled": self.auth.enabled, "logged_in": logged_in,
                "actions": logged_in,
                "csrf": self.auth.csrf_token(session) if session is not None else None}

    async def page(self, request: Request, template: str, status: int = 200,
                   **context: Any) -> HTMLResponse:
        """Template ``template`` as a response, with the shared context (rendered on the
        dashboard's threads: a page of long texts never holds up the event loop)."""
        context.setdefault("title", "")
        body = await self.run(render, self.env, template, base=self.base(request),
                              viewer=self.viewer(request), path=path_part, **context)
        return HTMLResponse(body, status_code=status)

    async def error(self, request: Request, status: int, message: str) -> Response:
        """An error as JSON for ``/api/`` routes, else as a page."""
        if is_api(request):
            return JSONResponse({"error": message}, status_code=status)
        return await self.page(request, "message.html", status, title="Error",
                               heading="Error", message=message)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn`` (blocking I/O) on the dashboard's threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.dashboard.executor,
                                          functools.partial(fn, *args, **kwargs))


def is_api(request: Request) -> bool:
    """Whether ``request`` is for the JSON API."""
    path = request.scope.get("path", "")
    root = str(request.scope.get("root_path") or "")
    if root and path.startswith(root):
        path = path[len(root):]
    return str(path).startswith("/api/")

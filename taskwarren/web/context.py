"""What every route shares: the dashboard's reads, its auth, its templates, and helpers."""

from __future__ import annotations

import asyncio
import dataclasses
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
from taskwarren.web.dead import DeadLetters
from taskwarren.web.redact import Redactor
from taskwarren.web.render import render

__all__ = ["TooSlow", "Web", "client_of", "literal_end", "path_part"]

P = ParamSpec("P")
T = TypeVar("T")


def path_part(text: str) -> str:
    """``text`` as one path segment (``/`` encoded too)."""
    return quote(text, safe="")


def literal_end(request: Request, suffix: str) -> bool:
    """Whether the request's path really ends in ``/suffix``, not in ``%2Fsuffix`` (the
    end of a job id or a queue name, which the router sees decoded)."""
    raw = request.scope.get("raw_path")
    if not isinstance(raw, bytes):
        return True
    return raw.endswith(b"/" + suffix.encode())


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
        timeout_s: the longest a page's blocking work may take (then: 503).
    """

    dashboard: Dashboard
    auth: Auth
    env: Environment
    timeout_s: float = 10.0
    redactor: Redactor = dataclasses.field(default_factory=Redactor)

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

    def shown(self, request: Request, key: str, value: T) -> T:
        """``value`` as the visitor may see it: problems in it without their details
        unless logged in (see :class:`Redactor`)."""
        session = self.auth.session(request)
        if session is not None and session.logged_in:
            return value
        found: T = self.redactor.value(key, value, 1 if key else 0)
        return found

    def json(self, request: Request, body: dict[str, Any], status: int = 200) -> Response:
        """``body`` as JSON, its problems as the visitor may see them."""
        return JSONResponse(self.shown(request, "", body), status_code=status)

    async def page(self, request: Request, template: str, status: int = 200,
                   **context: Any) -> HTMLResponse:
        """Template ``template`` as a response, with the shared context (rendered on the
        dashboard's threads: a page of long texts never holds up the event loop)."""
        context.setdefault("title", "")
        context = {k: self.shown(request, k, v) for k, v in context.items()}
        body = await self.run(render, self.env, template, base=self.base(request),
                              viewer=self.viewer(request), path=path_part, **context)
        return HTMLResponse(body, status_code=status)

    async def error(self, request: Request, status: int, message: str) -> Response:
        """An error as JSON for ``/api/`` routes, else as a page."""
        if is_api(request):
            return self.json(request, {"error": message}, status)
        return await self.page(request, "message.html", status, title="Error",
                               heading="Error", message=message)

    async def dead_letters(self, request: Request, name: str) -> DeadLetters:
        """The dead letters of queue ``name`` that ``request`` may read: those of the
        app's queues, or of any queue once logged in (reading them on RabbitMQ takes
        and gives back messages: see :mod:`taskwarren.web.dead`)."""
        session = self.auth.session(request)
        if name not in self.dashboard.queue_names and (session is None
                                                       or not session.logged_in):
            return DeadLetters([], None, "dead letters are read only for the dashboard's "
                                         "queues (its app's, or those given with -Q); "
                                         "log in to read another queue's")
        return await self.run(self.dashboard.dead_letters, name)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn`` (blocking I/O) on the dashboard's threads, within :attr:`timeout_s`.

        Raises:
            TooSlow: it did not finish in time (it goes on in its thread).
        """
        return await self.run_within(self.timeout_s, fn, *args, **kwargs)

    async def run_within(self, timeout_s: float, fn: Callable[P, T], *args: P.args,
                         **kwargs: P.kwargs) -> T:
        """``fn`` on the dashboard's threads, within ``timeout_s`` (see :meth:`run`)."""
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self.dashboard.executor,
                                    functools.partial(fn, *args, **kwargs))
        try:
            return await asyncio.wait_for(work, timeout_s)
        except TimeoutError:
            raise TooSlow(timeout_s) from None

    def unavailable(self, request: Request, message: str) -> Response:
        """A 503 made on the event loop (the threads may all be busy): JSON for the API,
        else a short page."""
        if is_api(request):
            return JSONResponse({"error": message}, status_code=503)
        body = render(self.env, "message.html", base=self.base(request),
                      viewer=self.viewer(request), path=path_part, title="Unavailable",
                      heading="Unavailable", message=message)
        return HTMLResponse(body, status_code=503)


class TooSlow(Exception):
    """Blocking work that did not finish within its bound (answered 503).

    Args:
        timeout_s: the bound.
    """

    def __init__(self, timeout_s: float) -> None:
        super().__init__(timeout_s)
        self.timeout_s = timeout_s

    def __str__(self) -> str:
        return (f"the job store or the broker did not answer within {self.timeout_s:g} s; "
                "try again in a moment")


def is_api(request: Request) -> bool:
    """Whether ``request`` is for the JSON API."""
    path = request.scope.get("path", "")
    root = str(request.scope.get("root_path") or "")
    if root and path.startswith(root):
        path = path[len(root):]
    return str(path).startswith("/api/")

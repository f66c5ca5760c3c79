"""The dashboard's ASGI application: its routes, security headers and static files."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskwarren.app import Warren
from taskwarren.settings import Settings
from taskwarren.web.actions import Actions
from taskwarren.web.api import Api
from taskwarren.web.auth import Auth
from taskwarren.web.context import TooSlow, Web
from taskwarren.web.data import Dashboard
from taskwarren.web.pages import Pages
from taskwarren.web.render import ASSETS, asset, environment

__all__ = ["app"]

#: Headers on every answer: no inline script or style runs, no framing, no sniffing.
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
     b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every HTTP answer."""

    def __init__(self, inner: ASGIApp) -> None:
        self.inner = inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; add the headers to the answer's start."""
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *((k, v) for k, v in SECURITY_HEADERS if k not in names)]
            await send(message)

        await self.inner(scope, receive, with_headers)


async def healthz(request: Request) -> Response:
    """``/healthz``: the dashboard process answers (it reads nothing)."""
    return JSONResponse({"status": "ok"})


async def static(request: Request) -> Response:
    """``/static/<name>``: the stylesheet and the script, from the package."""
    name = request.path_params["name"]
    body = asset(name)
    if body is None:
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(body, media_type=ASSETS[name],
                    headers={"cache-control": "public, max-age=3600"})


def routes(web: Web) -> list[BaseRoute]:
    """Every route of the dashboard (see :mod:`taskwarren.web` for the list)."""
    pages, api, actions = Pages(web), Api(web), Actions(web)
    get, post = ["GET"], ["POST"]
    return [
        Route("/healthz", healthz, methods=get),
        Route("/static/{name}", static, methods=get),
        Route("/", pages.overview, methods=get),
        Route("/login", pages.login, methods=get),
        Route("/login", actions.login, methods=post),
        Route("/logout", actions.logout, methods=post),
        Route("/jobs", pages.jobs, methods=get),
        # Task ids and queue names may hold a slash: the action routes come first.
        Route("/jobs/{job_id:path}/cancel", actions.cancel, methods=post),
        Route("/jobs/{job_id:path}/retry", actions.retry, methods=post),
        Route("/jobs/{job_id:path}", pages.job, methods=get),
        Route("/queues", pages.queues, methods=get),
        Route("/queues/{name:path}/replay", actions.replay, methods=post),
        Route("/queues/{name:path}/purge", actions.purge, methods=post),
        Route("/queues/{name:path}/purge", pages.purge_confirm, methods=get),
        Route("/queues/{name:path}", pages.queue, methods=get),
        Route("/workers", pages.workers, methods=get),
        Route("/schedules", pages.schedules, methods=get),
        Route("/api/overview", api.overview, methods=get),
        Route("/api/session", api.session, methods=get),
        Route("/api/jobs", api.jobs, methods=get),
        Route("/api/jobs/{job_id:path}/cancel", actions.cancel, methods=post),
        Route("/api/jobs/{job_id:path}/retry", actions.retry, methods=post),
        Route("/api/jobs/{job_id:path}", api.job, methods=get),
        Route("/api/queues", api.queues, methods=get),
        Route("/api/queues/{name:path}/replay", actions.replay, methods=post),
        Route("/api/queues/{name:path}/purge", actions.purge, methods=post),
        Route("/api/queues/{name:path}", api.queue, methods=get),
        Route("/api/workers", api.workers, methods=get),
        Route("/api/schedules", api.schedules, methods=get),
    ]


def app(warren: Warren | None = None, *, token: str | None = None,
        queues: Sequence[str] | None = None, management_url: str | None = None,
        listen_s: float = 1.5, cache_s: float = 5.0,
        read_timeout_s: float = 3.0, timeout_s: float = 10.0) -> Starlette:
    """The dashboard as an ASGI application (mount it in your own, or serve it with
    ``taskwarren web``).

    Served on its own, it closes its threads and its broker connection at shutdown (its
    lifespan). Mounted in another application, its lifespan does not run (Starlette
    runs only the outer one): call ``dashboard.state.close()`` from yours.

    Args:
        warren: the app whose job store, broker and schedules it shows (default: one
            built from the environment; it knows the schedules its tasks define).
        token: the secret that unlocks actions (default: ``TASKWARREN_WEB_TOKEN``);
            without one the dashboard is read-only.
        queues: the queues the overview lists (default: those of ``warren``'s tasks).
        management_url: the RabbitMQ management API (default:
            ``TASKWARREN_MANAGEMENT_URL``); without it queue figures come from AMQP.
        listen_s: how long to listen for worker announcements on RabbitMQ.
        cache_s: how long job counts (at most 2 s), pools and schedules are reused.
        read_timeout_s: how long a read from RabbitMQ may take (a page waits no longer
            on a broker that does not answer).
        timeout_s: how long a page's reads may take in all; past it the answer is 503
            (an action may take :data:`~taskwarren.web.actions.ACTION_TIMEOUT_S`).

    Raises:
        ConfigurationError: a bad setting (a token that is too short, say).
    """
    if warren is None:
        warren = Warren(settings=Settings.from_env())
    settings = warren.settings
    if token is not None:
        settings = settings.replace(web_token=token)  # checked like the setting
    dashboard = Dashboard(warren, queues=queues,
                          management_url=management_url or settings.management_url,
                          listen_s=listen_s, cache_s=cache_s, read_timeout_s=read_timeout_s)
    web = Web(dashboard, Auth(settings.web_token), environment(), timeout_s)

    async def too_slow(request: Request, exc: Exception) -> Response:
        return web.unavailable(request, str(exc))

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        dashboard.close()

    starlette = Starlette(routes=routes(web), lifespan=lifespan,
                          exception_handlers={TooSlow: too_slow})
    starlette.add_middleware(SecurityHeaders)
    starlette.state.web = web
    #: What the lifespan does at shutdown, for an application that mounts this one.
    starlette.state.close = dashboard.close
    return starlette

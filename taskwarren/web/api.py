"""The dashboard's JSON API for reading (``GET /api/...``); its actions are in
:mod:`taskwarren.web.actions`."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from taskwarren.web.context import Web
from taskwarren.web.dead import cut
from taskwarren.web.paging import jobs_query

__all__ = ["Api"]


class Api:
    """The JSON read handlers, over the shared :class:`Web` parts."""

    def __init__(self, web: Web) -> None:
        self.web = web

    async def overview(self, request: Request) -> Response:
        """``/api/overview``: what the overview shows (the live counters poll it)."""
        return self.web.json(request, await self.web.run(self.web.dashboard.overview))

    async def jobs(self, request: Request) -> Response:
        """``/api/jobs``: a page of jobs and the cursor of the next one."""
        params = dict(request.query_params)
        try:
            filters, cursor = jobs_query(params, time.time())
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        page = await self.web.run(self.web.dashboard.jobs_page, filters, cursor)
        if page.problem is not None:
            return self.web.json(request, {"error": page.problem}, 503)
        return JSONResponse({"jobs": [listed(j.as_json()) for j in page.jobs],
                             "next": page.next_cursor})

    async def job(self, request: Request) -> Response:
        """``/api/jobs/<id>``: one job."""
        job, problem = await self.web.run(self.web.dashboard.job, request.path_params["job_id"])
        if job is None:
            return self.web.json(request, {"error": problem or "no such job in the store"},
                                 503 if problem else 404)
        return JSONResponse(job.as_json())

    async def queues(self, request: Request) -> Response:
        """``/api/queues``: the figures of the app's queues."""
        views = await self.web.run(self.web.dashboard.queues)
        return self.web.json(request, {"queues": [v.as_json() for v in views]})

    async def queue(self, request: Request) -> Response:
        """``/api/queues/<name>``: a queue's figures and its dead letters."""
        name = request.path_params["name"]
        view = await self.web.run(self.web.dashboard.queue, name)
        dead = await self.web.dead_letters(request, name)
        body: dict[str, Any] = {"queue": view.as_json(),
                                "dead_letters": [d.as_json() for d in dead.letters],
                                "dead_letters_total": dead.total,
                                "dead_letters_problem": dead.problem}
        return self.web.json(request, body)

    async def workers(self, request: Request) -> Response:
        """``/api/workers``: live worker pools."""
        pools, problem = await self.web.run(self.web.dashboard.pools.get)
        return self.web.json(request, {"pools": pools or [], "problem": problem})

    async def schedules(self, request: Request) -> Response:
        """``/api/schedules``: the schedules and what the store knows of each."""
        found, problem = await self.web.run(self.web.dashboard.schedules.get)
        return self.web.json(request, {"schedules": found or [], "problem": problem})

    async def session(self, request: Request) -> Response:
        """``/api/session``: whether actions are possible and this session's CSRF token
        (what an API client sends as ``X-CSRF-Token``)."""
        viewer = self.web.viewer(request)
        return JSONResponse({"read_only": not viewer["enabled"],
                             "logged_in": viewer["logged_in"],
                             "csrf": viewer["csrf"] if viewer["logged_in"] else None})


#: The texts of a job that a list gives cut short (``/api/jobs/<id>`` gives them whole).
LONG_TEXTS = ("args", "error", "traceback")


def listed(job: dict[str, Any]) -> dict[str, Any]:
    """A job as a list gives it: its long texts cut (see :data:`LONG_TEXTS`)."""
    for name in LONG_TEXTS:
        if isinstance(job.get(name), str):
            job[name] = cut(job[name])
    return job

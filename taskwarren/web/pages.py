"""The dashboard's HTML pages (GET only: a page never changes anything)."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from taskwarren.store.jobs import CANCELLABLE_STATES, STATES
from taskwarren.web.context import Web, literal_end, path_part
from taskwarren.web.paging import Filters, jobs_query

__all__ = ["RETRYABLE_STATES", "Pages"]

#: States a job can be retried from (``app.jobs.retry``).
RETRYABLE_STATES = ("dead", "cancelled")
#: The most dead-letter ids a "replay all" or "purge all" form carries; past it, the form
#: carries the count shown instead (``expect``), and the action refuses if it changed.
MAX_FORM_IDS = 100


def chosen_fields(ids: list[str], total: int) -> dict[str, list[str]]:
    """The fields of a form acting on all ``total`` dead letters of a queue, ``ids`` those
    read: their ids if they are all of them (and few enough), else the count."""
    if len(ids) < total or len(ids) > MAX_FORM_IDS:
        return {"all": ["1"], "expect": [str(total)]}
    return {"id": ids}


class Pages:
    """The page handlers, over the shared :class:`Web` parts."""

    def __init__(self, web: Web) -> None:
        self.web = web

    async def overview(self, request: Request) -> Response:
        """``/``: job counts, the app's queues, live pools and schedules."""
        data = await self.web.run(self.web.dashboard.overview)
        return await self.web.page(request, "overview.html", title="Overview", nav="overview",
                             data=data, states=STATES)

    async def jobs(self, request: Request) -> Response:
        """``/jobs``: jobs newest first, filtered, a keyset page at a time."""
        params = dict(request.query_params)
        try:
            filters, cursor = jobs_query(params, time.time())
        except ValueError as exc:
            return await self.web.page(request, "jobs.html", 400, title="Jobs", nav="jobs",
                                 states=STATES, filters=Filters(), form=params,
                                 page=None, problem=str(exc), query={})
        page = await self.web.run(self.web.dashboard.jobs_page, filters, cursor)
        return await self.web.page(request, "jobs.html", title="Jobs", nav="jobs", states=STATES,
                             filters=filters, form=params, page=page, problem=page.problem,
                             query=filters.query(), first=cursor is None)

    async def job(self, request: Request) -> Response:
        """``/jobs/<id>``: one job's arguments, attempt, timings, worker and error."""
        task_id = request.path_params["job_id"]
        job, problem = await self.web.run(self.web.dashboard.job, task_id)
        if job is None:
            return await self.web.page(request, "message.html", 503 if problem else 404,
                                 title="Job", heading="Job", nav="jobs",
                                 message=problem or "no such job in the store")
        return await self.web.page(request, "job.html", title="Job", nav="jobs", job=job,
                             cancellable=job.state in (*CANCELLABLE_STATES, "running"),
                             retryable=job.state in RETRYABLE_STATES)

    async def queues(self, request: Request) -> Response:
        """``/queues``: the app's queues; ``?name=Q`` opens queue Q."""
        name = request.query_params.get("name", "").strip()
        if name:
            return RedirectResponse(f"{self.web.base(request)}/queues/{path_part(name)}",
                                    status_code=303)
        views = await self.web.run(self.web.dashboard.queues)
        return await self.web.page(request, "queues.html", title="Queues", nav="queues",
                             queues=[v.as_json() for v in views])

    async def queue(self, request: Request) -> Response:
        """``/queues/<name>``: its figures (and their source) and its first dead letters
        (:data:`~taskwarren.web.dead.MAX_SHOWN_DEAD`), with how many there are.

        On RabbitMQ, reading dead letters takes them and gives them back (as
        ``taskwarren dlq list`` does), which counts a delivery of each: so a view reads
        at most that many, a queue's are read at most once per ``cache_s``, and only
        for the dashboard's own queues unless the visitor is logged in.
        """
        return await self._queue(request, request.path_params["name"])

    async def _queue(self, request: Request, name: str) -> Response:
        task = request.query_params.get("task", "").strip() or None
        view = await self.web.run(self.web.dashboard.queue, name)
        dead = await self.web.dead_letters(request, name)
        shown = [d for d in dead.letters if task is None or d.task == task]
        # "Replay all" replays what this page counted, not what arrived since.
        chosen = {"id": [d.id for d in shown]} if task is not None else chosen_fields(
            [d.id for d in shown], dead.total or 0)
        return await self.web.page(request, "queue.html", title=f"Queue {name}",
                                   nav="queues", queue=view, letters=shown, total=dead.total,
                                   task=task, problem=dead.problem, chosen=chosen)

    async def purge_confirm(self, request: Request) -> Response:
        """``/queues/<name>/purge``: how many dead letters a purge would delete, and the
        form that confirms it (a GET: nothing is deleted here). The form carries the ids
        of the dead letters counted (past :data:`MAX_FORM_IDS`, their count, checked
        again before the purge): a purge never deletes more than this page said. No form
        when there is nothing to purge or the dead letters could not be read."""
        name = request.path_params["name"]
        if not literal_end(request, "purge"):  # /queues/x%2Fpurge: the queue "x/purge"
            return await self._queue(request, f"{name}/purge")
        ids = request.query_params.getlist("id")
        task = request.query_params.get("task", "").strip() or None
        dead = await self.web.dead_letters(request, name)
        if ids or task is not None:
            wanted = set(ids)
            found = [d.id for d in dead.letters
                     if (not ids or d.id in wanted) and (task is None or d.task == task)]
            count, fields = len(found), {"id": found}
        else:
            count = dead.total or 0
            fields = chosen_fields([d.id for d in dead.letters], count)
        return await self.web.page(request, "purge.html", title=f"Purge {name}",
                                   nav="queues", name=name, named=bool(ids or task), count=count,
                                   problem=dead.problem,
                                   fields=fields if count and dead.problem is None else None)

    async def workers(self, request: Request) -> Response:
        """``/workers``: live worker pools, from their announcements."""
        pools, problem = await self.web.run(self.web.dashboard.pools.get)
        return await self.web.page(request, "workers.html", title="Workers", nav="workers",
                             pools=pools or [], problem=problem)

    async def schedules(self, request: Request) -> Response:
        """``/schedules``: each schedule, its last and next tick, missed ticks."""
        found, problem = await self.web.run(self.web.dashboard.schedules.get)
        return await self.web.page(request, "schedules.html", title="Schedules", nav="schedules",
                             schedules=found or [], problem=problem)

    async def login(self, request: Request) -> Response:
        """``/login``: the token form (with a CSRF token bound to an anonymous session)."""
        auth = self.web.auth
        next_path = request.query_params.get("next", "")
        if not auth.enabled:
            return await self.web.page(request, "login.html", title="Log in", next=next_path,
                                 csrf=None)
        session = auth.session(request)
        value = None
        if session is None:
            session, value = auth.new_session(logged_in=False)
        response = await self.web.page(request, "login.html", title="Log in", next=next_path,
                                 csrf=auth.csrf_token(session))
        if value is not None:
            auth.set_cookie(request, response, value)
        return response

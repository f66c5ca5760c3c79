"""The dashboard's actions: POST only, each behind the token and a CSRF token, each logged.

They go through the code the command line uses: ``app.jobs.cancel_job`` and
``app.jobs.retry`` (``taskwarren jobs cancel|retry``; on the dashboard's own store
connections, whose waits are bounded), and the broker's
:class:`~taskwarren.brokers.capabilities.Admin` ``replay_dead`` / ``purge_dead``
(``taskwarren dlq replay|purge``). Every attempt is logged as ``web.action`` with the
action, its target, the outcome, the client's address and ``who``: a short hash of the
session's id (the same for every action of one session), ``bearer`` for the token sent
as a header, ``-`` before a session is known (never the token nor a session id).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from taskwarren.brokers.capabilities import Admin, require
from taskwarren.errors import TaskwarrenError
from taskwarren.web.auth import CSRF_FIELD, CSRF_HEADER, Session, who
from taskwarren.web.context import (
    TooSlow,
    Web,
    client_of,
    is_api,
    literal_end,
    loggable,
    path_part,
)
from taskwarren.web.data import problem_of
from taskwarren.web.forms import MAX_IDS, BadBody, read_fields

__all__ = ["Actions"]

log = structlog.get_logger("taskwarren.web")

#: The longest an action's blocking work may take (then: 503; it may still be done).
ACTION_TIMEOUT_S = 60.0


class Refused(Exception):
    """An action refused before anything was done.

    Args:
        status: the HTTP status to answer.
        reason: why, for the visitor and the log (holds no secret).
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


class Actions:
    """The POST handlers, over the shared :class:`Web` parts."""

    def __init__(self, web: Web) -> None:
        self.web = web

    async def _fields(self, request: Request) -> dict[str, Any]:
        try:
            return await read_fields(request)
        except BadBody as bad:
            raise Refused(bad.status, bad.reason) from None

    def _session(self, request: Request) -> Session:
        """The visitor's logged-in session (a cookie or the Bearer token), known before
        a byte of the body is read."""
        auth = self.web.auth
        if not auth.enabled:
            raise Refused(403, "the dashboard is read-only: start it with "
                               "TASKWARREN_WEB_TOKEN set to allow actions")
        session = auth.session(request)
        if session is None or not session.logged_in:
            raise Refused(403, "log in first (or send Authorization: Bearer <token>)")
        return session

    async def _authorize(self, request: Request) -> tuple[Session, dict[str, Any]]:
        """The session and the fields of a request that may act (a CSRF token bound to
        the session in the fields or the header), else :class:`Refused`."""
        session = self._session(request)
        fields = await self._fields(request)
        given = fields.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
        if not isinstance(given, str) or not self.web.auth.csrf_ok(session, given):
            raise Refused(403, "missing or wrong CSRF token (reload the page; API clients "
                               "read theirs from GET /api/session)")
        return session, fields

    async def _act(self, request: Request, action: str, target: str,
                   do: Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]) -> Response:
        """Authorize, run ``do`` (blocking) in a thread, log, answer JSON or a page."""
        said = log.bind(action=action, target=loggable(target), client=client_of(request),
                        who=who(self.web.auth.session(request)))
        if not literal_end(request, action):  # /jobs/x%2Fcancel: no such route
            return await self.web.error(request, 404, "not found")
        try:
            if "\x00" in target:
                raise Refused(400, "a job id or queue name holds no NUL character")
            _, fields = await self._authorize(request)
            status, result = await self.web.run_within(ACTION_TIMEOUT_S, do, fields)
        except TooSlow as exc:
            said.warning("web.action", outcome="timed out")
            return self.web.unavailable(request, f"{exc} (the action may still be done: "
                                                 "look before trying it again)")
        except Refused as refused:
            said.warning("web.action", outcome="refused", reason=refused.reason)
            return await self.web.error(request, refused.status, refused.reason)
        except TaskwarrenError as exc:
            said.warning("web.action", outcome="failed", error=problem_of(exc))
            return await self.web.error(request, 503, problem_of(exc))
        said.info("web.action", outcome="done" if status < 400 else "not done",
                  detail=loggable(str(result.get("message", ""))))
        if is_api(request):
            return JSONResponse(result, status_code=status)
        return await self.web.page(request, "done.html", status, title=action, action=action,
                             result=result, back=result.get("back", "/"))

    async def cancel(self, request: Request) -> Response:
        """Cancel a job (``app.jobs.cancel_job``)."""
        task_id = request.path_params["job_id"]
        back = f"/jobs/{path_part(task_id)}"

        def do(fields: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            outcome = self.web.dashboard.jobs.cancel_job(task_id)
            return (200 if outcome.done else 409,
                    {"done": outcome.done, "state": outcome.state, "message": outcome.how,
                     "back": back})

        return await self._act(request, "cancel", task_id, do)

    async def retry(self, request: Request) -> Response:
        """Run a dead or cancelled job again (``app.jobs.retry``)."""
        task_id = request.path_params["job_id"]
        back = f"/jobs/{path_part(task_id)}"

        def do(fields: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            try:
                job = self.web.dashboard.jobs.retry(task_id)
            except LookupError as exc:
                return 409, {"done": False, "message": str(exc.args[0] if exc.args else exc),
                             "back": back}
            return 200, {"done": True, "state": job.state, "back": back,
                         "message": f"{job.state} again (attempt {job.attempt}); the outbox "
                                    "relay publishes it"}

        return await self._act(request, "retry", task_id, do)

    def _chosen(self, fields: dict[str, Any]) -> tuple[list[str] | None, int | None]:
        """The dead letters a request names: their ids, or ``None`` for all and the count
        of them the visitor saw (``expect``)."""
        every = fields.get("all")
        if every is True or every in ("1", "yes", "true"):
            expect = fields.get("expect")
            if isinstance(expect, str) and expect.isascii() and expect.isdigit() \
                    and len(expect) <= 9:
                expect = int(expect)
            if isinstance(expect, bool) or not isinstance(expect, int) or expect < 0:
                raise Refused(400, "all needs expect: the number of dead letters you saw "
                                   "(the action refuses if it changed)")
            return None, expect
        ids = fields.get("ids")
        if not isinstance(ids, list) or not ids or len(ids) > MAX_IDS \
                or not all(isinstance(i, str) for i in ids):
            raise Refused(400, f"name the dead letters: id (form fields) or ids (a JSON "
                               f"list), 1 to {MAX_IDS} of them; or all with expect")
        return ids, None

    def _dead_letters(self, name: str, fields: dict[str, Any]) -> tuple[Admin,
                                                                        list[str] | None]:
        """The broker and the dead letters to act on; for all, only if their count is
        still the one the visitor saw (else the page was out of date: 409)."""
        ids, expect = self._chosen(fields)
        admin = require(self.web.dashboard.warren.broker, Admin, "dead-letter handling")
        if ids is None:
            now = admin.stats(name).dead
            if now != expect:
                raise Refused(409, f"the queue has {now} dead letters now, not the "
                                   f"{expect} you saw: nothing was done (look again)")
        return admin, ids

    async def replay(self, request: Request) -> Response:
        """Send dead letters back to their queue, attempts reset (``Admin.replay_dead``)."""
        name = request.path_params["name"]
        back = f"/queues/{path_part(name)}"

        def do(fields: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            admin, ids = self._dead_letters(name, fields)
            try:
                n = admin.replay_dead(name, ids)
            finally:
                self.web.dashboard.dead.forget(name)
            return 200, {"done": True, "count": n, "message": f"replayed {n}", "back": back}

        return await self._guarded(request, "replay", name, do)

    async def purge(self, request: Request) -> Response:
        """Delete dead letters (``Admin.purge_dead``); needs ``confirm`` (the page that
        asks for it shows how many would go)."""
        name = request.path_params["name"]
        back = f"/queues/{path_part(name)}"

        def do(fields: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            if fields.get("confirm") not in (True, "yes"):
                raise Refused(400, "purging deletes messages for good: confirm it "
                                   "(confirm=yes)")
            admin, ids = self._dead_letters(name, fields)
            try:
                n = admin.purge_dead(name, ids)
            finally:
                self.web.dashboard.dead.forget(name)
            return 200, {"done": True, "count": n, "message": f"purged {n}", "back": back}

        return await self._guarded(request, "purge", name, do)

    async def _guarded(self, request: Request, action: str, target: str,
                       do: Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]) -> Response:
        # A Refused raised inside ``do`` (bad ids, no confirm) comes back through the
        # thread: answer it as one raised before.
        def checked(fields: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            try:
                return do(fields)
            except Refused as refused:
                return refused.status, {"done": False, "message": refused.reason,
                                        "error": refused.reason}

        return await self._act(request, action, target, checked)

    async def login(self, request: Request) -> Response:
        """Check the token; on success, a new logged-in session cookie and back to where
        the visitor was going."""
        auth = self.web.auth
        client = client_of(request)
        try:
            if not auth.enabled:
                raise Refused(403, "the dashboard is read-only: there is nothing to log in to")
            session = auth.session(request)
            if session is None:  # known before the body is read: the login page's cookie
                raise Refused(403, "missing or wrong CSRF token: reload the login page")
            fields = await self._fields(request)
            given = fields.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
            if not isinstance(given, str) or not auth.csrf_ok(session, given):
                raise Refused(403, "missing or wrong CSRF token: reload the login page")
            token = fields.get("token")
            if not isinstance(token, str) or not auth.token_matches(token):
                raise Refused(403, "wrong token")
        except Refused as refused:
            log.warning("web.action", action="login", target="-", outcome="refused",
                        reason=refused.reason, client=client,
                        who=who(auth.session(request)))
            return await self.web.error(request, refused.status, refused.reason)
        session, value = auth.new_session(logged_in=True)
        log.info("web.action", action="login", target="-", outcome="done", client=client,
                 who=who(session))
        response = RedirectResponse(self.web.base(request) + _local(fields.get("next")),
                                    status_code=303)
        auth.set_cookie(request, response, value)
        return response

    async def logout(self, request: Request) -> Response:
        """End the session."""
        try:
            session, _ = await self._authorize(request)
        except Refused as refused:
            log.warning("web.action", action="logout", target="-", outcome="refused",
                        reason=refused.reason, client=client_of(request),
                        who=who(self.web.auth.session(request)))
            return await self.web.error(request, refused.status, refused.reason)
        log.info("web.action", action="logout", target="-", outcome="done",
                 client=client_of(request), who=who(session))
        self.web.auth.end(session)
        response = RedirectResponse(self.web.base(request) + "/", status_code=303)
        self.web.auth.clear_cookie(request, response)
        return response


def _local(target: object) -> str:
    """``target`` if it is a path of this site, else ``/`` (no open redirect)."""
    if not isinstance(target, str) or not target.startswith("/") or target.startswith("//") \
            or "\\" in target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target

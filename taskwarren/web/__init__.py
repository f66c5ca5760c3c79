"""The dashboard: queues, workers, jobs, dead letters and schedules on one site.

``taskwarren web [--host 127.0.0.1] [--port 8080] [MODULES...]`` serves it; or mount
:func:`app` in an ASGI application of your own. It needs the ``web`` extra
(``pip install 'taskwarren[web]'``: Starlette, Jinja2, uvicorn, python-multipart).
Pages are rendered on the server, on the dashboard's threads (never on the event loop);
one small script (no build step, no CDN) refreshes the overview's counters. Everything
that came from a message is escaped.

Dead letters are read for the dashboard's own queues (its app's, or those given with
``-Q``), and for any other queue only once logged in: on RabbitMQ, reading them takes
and gives back messages (as ``taskwarren dlq list`` does), so a view reads at most 100
and a queue's are read at most once per ``cache_s`` (see :mod:`taskwarren.web.dead`).

Problems (a store or broker that fails) show their kind to anyone and their details
(a driver's text, host and database names) only once logged in; they are logged.

Reading needs nothing; acting needs the token (``TASKWARREN_WEB_TOKEN``), a session or
``Authorization: Bearer``, and a CSRF token (see :mod:`taskwarren.web.auth`). Without a
token the dashboard is read-only and every action route answers 403.

Pages (GET):

==============================  ==========================================================
``/``                           overview: jobs per state, the app's queues (ready, unacked,
                                consumers, dead), live pools, schedules; counters refresh
``/jobs``                       jobs newest first; ``state``, ``task``, ``queue``, ``since``
                                (``1h`` or ISO-8601), ``limit`` (1-200, 50), ``before`` (the
                                keyset cursor of the next page)
``/jobs/<id>``                  one job: arguments, attempt, timings, worker, error, traceback
``/queues``                     the app's queues (``?name=Q`` opens queue Q)
``/queues/<name>``              its figures and their source, its first 100 dead letters
                                and how many there are (``?task=``)
``/queues/<name>/purge``        how many dead letters a purge deletes (``?id=``, ``?task=``),
                                and its confirm form (carrying their ids: it never deletes
                                more than it said)
``/workers``                    live worker pools
``/schedules``                  schedules: status, last and next tick, missed ticks
``/login``                      the token form
``/healthz``                    ``{"status": "ok"}``
``/static/<name>``              ``dashboard.css``, ``dashboard.js``
==============================  ==========================================================

JSON API (GET; errors are ``{"error": "..."}`` with a 4xx/5xx status):

==============================  ==========================================================
``/api/overview``               ``{"jobs": {"counts": {state: n}, "total", "problem"},
                                "queues": [queue], "pools": {"count", "processes",
                                "problem"}, "schedules": {"count", "problem"},
                                "generated_at"}``
``/api/jobs``                   ``{"jobs": [job], "next": cursor or null}`` (the filters
                                of ``/jobs``; a job's ``args``, ``error`` and ``traceback``
                                cut to 4,096 characters, ending ``...``)
``/api/jobs/<id>``              a job: ``id, task, queue, state, attempt, created_at,
                                scheduled_at, started_at, finished_at, duration_s, worker,
                                error, traceback, args, unique_key, updated_at`` (times
                                ISO-8601 UTC or null), as ``taskwarren jobs show --json``
``/api/queues``                 ``{"queues": [queue]}``; a queue is ``{"name", "ready",
                                "unacked", "consumers", "dead", "delayed", "rates":
                                {"publish", "deliver", "ack"}, "source", "source_label",
                                "note", "problem"}`` (null: unknown; rates only from the
                                management API)
``/api/queues/<name>``          ``{"queue": queue, "dead_letters": [{"id", "task",
                                "attempt", "error_type", "error", "failed_at", "reason",
                                "arguments"}], "dead_letters_total",
                                "dead_letters_problem"}``: the first 100 dead letters,
                                each text cut to 4,096 characters, and how many there are
``/api/workers``                ``{"pools": [{"host", "pid", "children", "queues",
                                "in_flight", "uptime_s"}], "problem"}``
``/api/schedules``              ``{"schedules": [{"name", "schedule", "stored", "overlap",
                                "status", "last_tick", "next_tick", "missed",
                                "last_job"}], "problem"}``
``/api/session``                ``{"read_only", "logged_in", "csrf"}``
==============================  ==========================================================

Actions (POST; URL-encoded form fields, or a JSON object, at most 1 MiB; each needs the
session or Bearer token and ``csrf`` / ``X-CSRF-Token``):

==========================================  ==============================================
``/login``                                  ``token``, ``csrf``, ``next``: sets the session
``/logout``                                 ends it (the old cookie is refused after)
``/jobs/<id>/cancel``, ``/api/...``         ``app.jobs.cancel_job``: ``{"done", "state",
                                            "message"}`` (409 when it will still run)
``/jobs/<id>/retry``, ``/api/...``          ``app.jobs.retry``: ``{"done", "state",
                                            "message"}`` (409 unless dead or cancelled)
``/queues/<name>/replay``, ``/api/...``     ``id`` (a repeated form field; in JSON,
                                            ``ids``, a list) or ``all=1`` with
                                            ``expect``, the count of dead letters seen
                                            (409, nothing done, if it changed):
                                            ``Admin.replay_dead``: ``{"done", "count"}``
``/queues/<name>/purge``, ``/api/...``      the same and ``confirm=yes``:
                                            ``Admin.purge_dead``: ``{"done", "count"}``
==========================================  ==============================================
"""

from __future__ import annotations

#: The modules of the ``web`` extra (import names).
_EXTRA = frozenset({"starlette", "jinja2", "multipart", "python_multipart"})

try:
    from taskwarren.web.server import app
except ModuleNotFoundError as exc:  # say which extra, in one line
    if exc.name is None or exc.name.split(".")[0] not in _EXTRA:
        raise
    raise ModuleNotFoundError(f"taskwarren.web needs the web extra ({exc.name} is missing): "
                              "pip install 'taskwarren[web]'", name=exc.name) from None

__all__ = ["app"]

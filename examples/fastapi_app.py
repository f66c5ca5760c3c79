"""A FastAPI application that queues a welcome mail for every signup.

Run the API and a worker pool beside it (``TASKWARREN_URL`` picks the broker)::

    uvicorn examples.fastapi_app:api
    taskwarren worker examples.fastapi_app

``lifespan(warren)`` connects to the broker when the API starts (a broker that cannot
be reached fails the start, not the first signup) and closes the connection when it
stops. The endpoint is a plain ``def``: FastAPI runs it in its thread pool, where
``.send()`` may block until the broker confirms the message.
"""

from __future__ import annotations

import structlog
from fastapi import FastAPI
from pydantic import BaseModel, Field

from taskwarren import Warren
from taskwarren.contrib.asgi import lifespan

log = structlog.get_logger("examples.fastapi_app")

warren = Warren()
#: Stands in for a mail server: the addresses welcomed, in this process.
MAILED: list[str] = []


@warren.task(queue="examples.welcome", retries=3)
def send_welcome(email: str) -> None:
    """Mail a welcome (here: note it)."""
    MAILED.append(email)
    log.info("welcome.sent", domain=email.rsplit("@", 1)[-1])


class Signup(BaseModel):
    """The body of ``POST /signups``."""

    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", max_length=254)


api = FastAPI(lifespan=lifespan(warren))


@api.post("/signups", status_code=202)
def signup(body: Signup) -> dict[str, str]:
    """Accept a signup; the welcome mail goes out in a worker."""
    return {"task_id": send_welcome.send(body.email)}

"""``taskwarren web``: the dashboard, served by uvicorn (the ``web`` extra)."""

from __future__ import annotations

import importlib.util

import click

from taskwarren.app import Warren
from taskwarren.cli_loading import load_app, log_options
from taskwarren.settings import Settings

#: What the dashboard needs beyond taskwarren's own dependencies (import names).
WEB_MODULES = ("starlette", "jinja2", "uvicorn", "multipart")


def missing_web_modules() -> list[str]:
    """The modules of the ``web`` extra that are not installed."""
    return [m for m in WEB_MODULES if importlib.util.find_spec(m) is None]


@click.command("web")
@click.argument("modules", nargs=-1)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (the default serves this machine only).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("-Q", "--queues", default=None,
              help="Comma-separated queues the overview shows (default: those of MODULES).")
@click.option("--url", default=None, help="Broker URL (default: TASKWARREN_URL).")
@click.option("--forwarded-allow-ips", default=None, metavar="IPS",
              help="Comma-separated addresses of the reverse proxies whose "
                   "X-Forwarded-For and X-Forwarded-Proto are believed (default: none; "
                   "the log then names the address that connected).")
@log_options
def web_command(modules: tuple[str, ...], host: str, port: int, queues: str | None,
                url: str | None, forwarded_allow_ips: str | None) -> None:
    """Serve the dashboard: jobs, queues, dead letters, workers and schedules.

    MODULES (optional) are loaded as `taskwarren worker` loads them: the dashboard then
    knows their queues and the schedules their tasks define. Actions (cancel, retry,
    replay, purge) need TASKWARREN_WEB_TOKEN; without it the dashboard is read-only.
    """
    missing = missing_web_modules()
    if missing:
        raise click.ClickException(
            f"the dashboard needs the web extra ({', '.join(missing)} missing): "
            "pip install 'taskwarren[web]'")
    import uvicorn

    from taskwarren.web import app as web_app

    warren = load_app(modules, url) if modules else Warren(settings=Settings.from_env(url=url))
    # An unsupported broker URL ends the command here, in one line, rather than serving
    # pages that all fail (no connection is made yet).
    warren.broker  # noqa: B018
    chosen = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    # The settings were checked as the app was built: the token's length included.
    asgi = web_app(warren, queues=chosen)
    click.echo(f"taskwarren dashboard on http://{host}:{port}/ ("
               f"{'actions need the token' if warren.settings.web_token else 'read-only'})",
               err=True)
    # uvicorn believes X-Forwarded-For from 127.0.0.1 by default: anything on this
    # machine could then name another client in the action log.
    uvicorn.run(asgi, host=host, port=port, log_level="warning", access_log=False,
                server_header=False, proxy_headers=forwarded_allow_ips is not None,
                forwarded_allow_ips=forwarded_allow_ips)

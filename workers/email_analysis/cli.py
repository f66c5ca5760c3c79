"""``taskwarren-email``: the email pipeline's own commands (the ingress).

``taskwarren-email ingress --listen 127.0.0.1:10025 --maildir DIR [--lmtp]`` runs the
SMTP (or LMTP) ingress of :mod:`.ingress` until SIGTERM or SIGINT;
``taskwarren-email prune --maildir DIR --older-than DAYS`` removes the files of messages
analysed longer ago (:mod:`.prune`).
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from .files import DEFAULT_MAX_BYTES
from .ingress import IngressConfig, parse_listen, run_forever
from .intake import Intake, UnavailableError, store_url_of
from .store import DEFAULT_DB

__all__ = ["ingress_command", "main", "prune_command"]


def _listen(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, int]:
    try:
        return parse_listen(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group()
def main() -> None:
    """The email analysis pipeline's commands."""


@main.command("ingress")
@click.option("--listen", default="127.0.0.1:10025", show_default=True, callback=_listen,
              help="HOST:PORT to accept mail on.")
@click.option("--maildir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Maildir the messages are written to (the workers' EMAIL_ANALYSIS_MAILDIR).")
@click.option("--lmtp", is_flag=True, help="Speak LMTP (one reply per recipient), not SMTP.")
@click.option("--db", default=None,
              help="Results store, which also holds taskwarren's outbox (default: "
                   "EMAIL_ANALYSIS_DB, else email_analysis.db).")
@click.option("--max-bytes", type=click.IntRange(min=1), default=DEFAULT_MAX_BYTES,
              show_default=True, help="Largest message accepted; larger ones get 552.")
@click.option("--max-outbox-age", "max_outbox_age_s", type=click.FloatRange(min=0.1),
              default=5.0, show_default=True,
              help="Answer 451 while an analysis job has waited this many seconds in the "
                   "outbox (the broker is down or blocked, or no relay runs).")
@click.option("--threads", type=click.IntRange(min=1, max=256), default=8, show_default=True,
              help="Concurrent accepts (fsync and store transaction).")
@click.option("--max-sessions", type=click.IntRange(min=1), default=20, show_default=True,
              help="Most SMTP/LMTP sessions at once; more are answered 421 (each may hold "
                   "one message of up to --max-bytes in memory).")
def ingress_command(listen: tuple[str, int], maildir: Path, lmtp: bool, db: str | None,
                    max_bytes: int, max_outbox_age_s: float, threads: int,
                    max_sessions: int) -> None:
    """Accept mail over SMTP or LMTP; answer 250 once it is durable and queued for analysis."""
    from taskwarren import Warren

    db_url = store_url_of(db or os.environ.get("EMAIL_ANALYSIS_DB", "").strip() or DEFAULT_DB)
    configured = os.environ.get("TASKWARREN_STORE_URL", "").strip()
    if configured and store_url_of(configured) != db_url:
        raise click.UsageError(
            "the ingress enqueues in the results store's transaction: TASKWARREN_STORE_URL "
            "must name the same database as EMAIL_ANALYSIS_DB (or --db)")
    app = Warren(store_url=db_url, jobs=True)
    intake = Intake(db_url, app, max_outbox_age_s=max_outbox_age_s)
    host, port = listen
    config = IngressConfig(host=host, port=port, maildir=maildir, lmtp=lmtp,
                           max_bytes=max_bytes, threads=threads, max_sessions=max_sessions)
    try:
        run_forever(config, intake)
    except UnavailableError as exc:
        raise click.ClickException(f"cannot start: {exc}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None


@main.command("prune")
@click.option("--maildir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              required=True, help="The ingress's Maildir.")
@click.option("--older-than", "older_than_days", type=click.FloatRange(min=0), required=True,
              help="Days since a message's analysis was stored (0: every analysed message).")
@click.option("--db", default=None,
              help="Results store (default: EMAIL_ANALYSIS_DB, else email_analysis.db).")
def prune_command(maildir: Path, older_than_days: float, db: str | None) -> None:
    """Remove the Maildir files of messages analysed over --older-than days ago.

    Messages not analysed yet stay, however old. Run it from cron, say daily.
    """
    from .prune import OutsideMaildirError, prune
    from .store import open_store

    with open_store(db) as store:
        try:
            removed = prune(store, maildir, older_than_days * 86400)
        except OutsideMaildirError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"removed {removed} message file(s) analysed over {older_than_days:g} "
               "day(s) ago")


if __name__ == "__main__":
    main()

"""The SMTP/LMTP ingress: mail in, durable, recorded and queued for analysis, then 250.

A mail server hands a copy of every message to the ingress (Postfix ``always_bcc`` to
an SMTP relay, or an LMTP hop). Per message, in this order:

1. the bytes go into the Maildir, fsynced (:class:`.maildir.Maildir`);
2. one transaction of the results store records the message and enqueues its
   analysis through taskwarren's outbox (:class:`.intake.Intake`);
3. only then the answer is ``250`` (LMTP: one per recipient).

A crash before the 250 means the mail server delivers again (the message key makes
that a no-op if the first commit happened); a crash after it loses nothing. Whatever
keeps step 1 or 2 from completing is answered ``451`` (try again later): a full disk,
a store that is down or blocked, or analysis that is behind because the broker is
down (:meth:`.intake.Intake.accept`). A message over the size limit is answered
``552``. The protocol is aiosmtpd's; the blocking work (fsync, the transaction) runs
in a thread pool, so sessions never wait on each other's disk or database.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from .files import DEFAULT_MAX_BYTES
from .intake import Intake, OutcomeUnknownError, UnavailableError, identify
from .maildir import Maildir

__all__ = ["Ingress", "IngressConfig", "parse_listen"]

log = structlog.get_logger("email_analysis.ingress")

ACCEPTED = "250 2.0.0 Accepted for analysis"
#: The temporary failure: the mail server keeps the message and tries again.
RETRY_LATER = "451 4.3.0 Cannot accept the message now; try again later"
#: A message whose data ends once the ingress is stopping (never 5xx: that bounces).
STOPPING = "451 4.3.2 The ingress is shutting down; try again later"
#: The greeting instead of 220 beyond :attr:`IngressConfig.max_sessions`; then it closes.
TOO_MANY_SESSIONS = "421 4.3.2 Too many sessions; try again later"


@dataclass(frozen=True)
class IngressConfig:
    """How an ingress listens and where it puts mail.

    Attributes:
        host: address to listen on.
        port: TCP port (0: any free one; see :attr:`Ingress.port`).
        maildir: the Maildir messages are delivered into (the workers'
            ``EMAIL_ANALYSIS_MAILDIR``).
        lmtp: speak LMTP (LHLO, one reply per recipient) instead of SMTP.
        max_bytes: the largest message accepted; larger ones get ``552``.
        threads: threads doing the fsyncs and transactions (concurrent accepts).
        accept_timeout_s: longest time one accept may take before the answer is ``451``
            (an accept still queued for a thread is cancelled; one already running may
            commit late, and the next delivery is then a duplicate).
        max_sessions: most SMTP/LMTP sessions at once; more are greeted with ``421`` and
            closed. Each may hold one message of up to ``max_bytes`` in memory, so this
            bounds the ingress's memory (about ``2 * max_sessions * max_bytes``).
    """

    host: str = "127.0.0.1"
    port: int = 10025
    maildir: Path = Path("maildir")
    lmtp: bool = False
    max_bytes: int = DEFAULT_MAX_BYTES
    threads: int = 8
    accept_timeout_s: float = 30.0
    max_sessions: int = 20


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:25`` for IPv6) as a host and a port.

    Raises:
        ValueError: not of that form.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


class _Handler:
    """aiosmtpd's handler: the DATA hook is where a message becomes durable or not."""

    def __init__(self, ingress: Ingress) -> None:
        self.ingress = ingress

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        if isinstance(content, str):  # not with decode_data=False; defensive
            content = content.encode("utf-8", "surrogateescape")
        replies = max(1, len(envelope.rcpt_tos)) if self.ingress.config.lmtp else 1
        try:
            status = await self.ingress.take(content)
        except Exception as exc:  # here, so that LMTP still gets one reply per recipient
            status = await self.handle_exception(exc)
        return "\r\n".join([status] * replies)

    async def handle_exception(self, error: Exception) -> str:
        """Whatever went wrong is answered ``451``, never aiosmtpd's ``500`` (a bounce)
        with the error's text; the log gets a bounded line (no message content)."""
        log.error("ingress.session_failed", error=type(error).__name__,
                  detail=ascii(str(error))[:200])
        return RETRY_LATER


class _Counted(SMTP):
    """A session that is in :attr:`Ingress._sessions` until it closes."""

    def __init__(self, ingress: Ingress, *args: Any, **kwargs: Any) -> None:
        self._ingress: Ingress | None = None
        super().__init__(*args, **kwargs)
        ingress._sessions.add(self)  # when made, not when connected: the factory checks
        self._ingress = ingress

    def connection_lost(self, error: Exception | None) -> None:
        if self._ingress is not None:
            self._ingress._sessions.discard(self)
            self._ingress = None
        super().connection_lost(error)

    def drop(self) -> None:
        """Close the connection (the ingress stops; the mail server retries)."""
        if self.transport is not None:
            self.transport.close()


class _SMTPSession(_Counted):
    """An SMTP session."""


class _LMTPSession(_Counted, LMTP):
    """An LMTP session."""


class _Refuse(asyncio.Protocol):
    """A connection beyond the cap: ``421`` instead of the greeting, then closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(TOO_MANY_SESSIONS.encode("ascii") + b"\r\n")
        transport.close()


class Ingress:
    """One SMTP or LMTP listener in front of an :class:`.intake.Intake`.

    Use :meth:`serve` inside an event loop, or :meth:`start` / :meth:`stop` to run it
    on a thread of its own (the demo, tests).
    """

    def __init__(self, config: IngressConfig, intake: Intake) -> None:
        self.config = config
        self.intake = intake
        self.maildir = Maildir(config.maildir)
        self.port = config.port
        self._pool = ThreadPoolExecutor(config.threads, thread_name_prefix="ingress")
        self._handler = _Handler(self)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._sessions: set[_Counted] = set()  # open sessions (the loop's thread only)
        self._closing = False  # set once serve() stops: no new accepts
        self._taking = 0  # take() calls not yet returned (the loop's thread only)
        self._all_taken: asyncio.Event | None = None  # set when _taking drops to 0

    # -- one message
    def _accept_blocking(self, data: bytes) -> str:
        identity = identify(data)
        try:
            path = self.maildir.deliver(data)
        except OSError as exc:
            log.warning("ingress.maildir_failed", error=exc.strerror or type(exc).__name__)
            return RETRY_LATER
        try:
            new = self.intake.accept(identity, path, len(data))
        except OutcomeUnknownError as exc:
            # The record may point at the file: keep it (an orphan at worst, never a loss).
            log.warning("ingress.deferred", reason=str(exc), kept=path.name)
            return RETRY_LATER
        except UnavailableError as exc:
            self.maildir.discard(path)
            log.warning("ingress.deferred", reason=str(exc))
            return RETRY_LATER
        if not new:
            self.maildir.discard(path)
            log.info("ingress.duplicate", message_key=identity.key)
        return ACCEPTED

    async def take(self, data: bytes) -> str:
        """Make ``data`` durable and queued; the SMTP status line to answer with."""
        if self._closing:
            return STOPPING
        self._taking += 1
        try:
            return await self._take(data)
        finally:
            self._taking -= 1
            if self._taking == 0 and self._all_taken is not None:
                self._all_taken.set()

    async def _take(self, data: bytes) -> str:
        try:
            work = self._pool.submit(self._accept_blocking, data)
        except RuntimeError:  # the pool shut down meanwhile
            return STOPPING
        waiting = asyncio.wrap_future(work)
        try:
            return await asyncio.wait_for(asyncio.shield(waiting),
                                          self.config.accept_timeout_s)
        except TimeoutError:
            # Not started: drop it (and the message it holds). Started: it may commit,
            # then the mail server's retry is a duplicate; its outcome is only logged.
            started = not work.cancel()
            if started:
                waiting.add_done_callback(_log_late)
            log.warning("ingress.deferred", reason="the accept took too long",
                        started=started)
            return RETRY_LATER

    # -- serving
    def _protocol(self) -> asyncio.Protocol:
        if len(self._sessions) >= self.config.max_sessions:
            log.warning("ingress.too_many_sessions", limit=self.config.max_sessions)
            return _Refuse()
        kind = _LMTPSession if self.config.lmtp else _SMTPSession
        return kind(self, self._handler, data_size_limit=self.config.max_bytes,
                    enable_SMTPUTF8=True, decode_data=False, ident="taskwarren-email ingress",
                    loop=asyncio.get_running_loop())

    async def serve(self, ready: threading.Event | None = None) -> None:
        """Listen until :meth:`shutdown`, SIGTERM or SIGINT; then stop listening and let
        the accepts in progress finish."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopping = asyncio.Event()
        self.intake.prepare()
        server = await loop.create_server(self._protocol, self.config.host, self.config.port)
        self.port = int(server.sockets[0].getsockname()[1])
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stopping.set)
        log.info("ingress.started", host=self.config.host, port=self.port,
                 protocol="lmtp" if self.config.lmtp else "smtp",
                 maildir=str(self.maildir.root))
        if ready is not None:
            ready.set()
        try:
            await self._stopping.wait()
        finally:
            self._closing = True  # a DATA ending from now on is answered 451
            server.close()
            # Accepts already running finish: their answer may still reach the client.
            await loop.run_in_executor(None, self._pool.shutdown, True)
            if self._taking:  # their answers are written when take() returns
                self._all_taken = asyncio.Event()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._all_taken.wait(), 5.0)
            for session in list(self._sessions):  # the rest hold nothing accepted
                session.drop()
            await asyncio.sleep(0)  # their connection_lost
            self.intake.close()
            log.info("ingress.stopped")

    def shutdown(self) -> None:
        """Ask :meth:`serve` to stop (from any thread)."""
        if self._loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended already
                self._loop.call_soon_threadsafe(self._stopping.set)

    def start(self, timeout_s: float = 30.0) -> None:
        """Serve on a thread of its own; return once it listens (:attr:`port` is set).

        Raises:
            UnavailableError: the store could not be prepared.
            TimeoutError: it did not start listening in time.
        """

        def run() -> None:
            try:
                asyncio.run(self.serve(self._ready))
            except BaseException as exc:
                self._failed = exc
                self._ready.set()

        self._thread = threading.Thread(target=run, name="ingress-loop", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError("the ingress did not start listening")
        if self._failed is not None:
            raise self._failed

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop a :meth:`start`-ed ingress and wait for its thread."""
        self.shutdown()
        if self._thread is not None:
            self._thread.join(timeout_s)


def _log_late(done: asyncio.Future[str]) -> None:
    """The outcome of an accept answered 451 for its time (retrieved, so never unhandled)."""
    if done.cancelled():
        return
    error = done.exception()
    log.info("ingress.late_accept", status=None if error else done.result()[:3],
             error=type(error).__name__ if error else None)


def run_forever(config: IngressConfig, intake: Intake) -> None:
    """Run an ingress in this (main) thread until SIGTERM or SIGINT."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(Ingress(config, intake).serve())



"""Who may act on the dashboard: the token, signed session cookies and CSRF tokens.

Without a token the dashboard is read-only: no action is offered, and every mutating
route answers 403. With one (``TASKWARREN_WEB_TOKEN``, or ``token=``):

- ``POST /login`` takes the token (compared with :func:`hmac.compare_digest`) and sets a
  new session cookie, ``tw_session``: a random session id, its time of issue and whether
  it is logged in, signed with HMAC-SHA256 under a key derived from the token (a new
  token ends every session). The cookie is ``HttpOnly``, ``SameSite=Strict``, ``Path=/``
  (``Secure`` over HTTPS), and expires after :data:`SESSION_TTL_S`.
- ``POST /logout`` ends the session for good: its id is kept (in this process's memory,
  until it would have expired anyway) and refused from then on, whoever sends the
  cookie. At most :data:`MAX_ENDED` are kept: past that, the oldest is let go along with
  every session issued no later than it (ending a few more sessions, never reviving
  one). A dashboard run in several processes keeps one such list per process.
- Every mutating route needs a logged-in session, or ``Authorization: Bearer <token>``,
  AND a CSRF token bound to that session: the HMAC of its session id under the same key,
  sent as the form field ``csrf`` or the header ``X-CSRF-Token``. Pages put it in their
  forms; an API client reads its own from ``GET /api/session``. The login form carries
  one bound to an anonymous session (set by ``GET /login``), so a login cannot be forged
  either.

The session (or the Bearer token) is checked before a byte of the body is read; the
body is then read up to :data:`~taskwarren.web.forms.MAX_BODY_BYTES`. Signatures and
CSRF tokens are compared as bytes: one that is not ASCII is simply wrong. The token
itself is never logged, shown, or put in a cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["COOKIE", "Auth", "Session", "who"]

#: The session cookie's name.
COOKIE = "tw_session"
#: How long a session lasts (seconds).
SESSION_TTL_S = 12 * 3600
#: The session id of requests that carry the token as a Bearer header.
BEARER_SESSION = "bearer"
#: The form field and the header that carry the CSRF token.
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
#: The most ended sessions remembered (see the module docstring).
MAX_ENDED = 10_000


@dataclass(frozen=True, slots=True)
class Session:
    """A verified session.

    Attributes:
        id: its random id (:data:`BEARER_SESSION` for a Bearer request).
        logged_in: whether the token was given.
        issued_at: when it was made (seconds since the epoch).
    """

    id: str
    logged_in: bool
    issued_at: float


class Auth:
    """Sessions and CSRF tokens under a key derived from ``token`` (``None``: read-only).

    Args:
        token: the dashboard's token.
    """

    def __init__(self, token: str | None) -> None:
        self._token_digest = None if token is None else _digest(token)
        self._key = b"" if token is None else hmac.new(
            token.encode(), b"taskwarren.web session key v1", hashlib.sha256).digest()
        self._lock = threading.Lock()
        #: Ended sessions: id -> time of issue.
        self._ended: dict[str, float] = {}
        #: Sessions issued at or before this time are ended too (see :meth:`end`).
        self._ended_before = 0.0

    def __repr__(self) -> str:
        return f"<Auth {'token set' if self.enabled else 'read-only'}>"

    @property
    def enabled(self) -> bool:
        """Whether actions can be unlocked at all (a token is configured)."""
        return self._token_digest is not None

    def token_matches(self, given: str) -> bool:
        """Whether ``given`` is the token (constant time; never when read-only)."""
        if self._token_digest is None:
            return False
        return hmac.compare_digest(_digest(given), self._token_digest)

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def csrf_token(self, session: Session) -> str:
        """The CSRF token bound to ``session``."""
        return self._sign("csrf\x00" + session.id)

    def new_session(self, logged_in: bool) -> tuple[Session, str]:
        """A fresh session and its cookie value."""
        session = Session(secrets.token_hex(16), logged_in, float(int(time.time())))
        body = f"{session.id}.{int(session.issued_at)}.{int(logged_in)}"
        return session, f"{body}.{self._sign('session' + chr(0) + body)}"

    def session(self, request: Request) -> Session | None:
        """The request's verified session: a Bearer token, else a valid cookie."""
        if not self.enabled:
            return None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and given:
            if self.token_matches(given.strip()):
                return Session(BEARER_SESSION, True, time.time())
            return None
        return self._cookie(request.cookies.get(COOKIE, ""))

    def _cookie(self, value: str) -> Session | None:
        parts = value.split(".")
        if len(parts) != 4:
            return None
        sid, issued, logged_in, signature = parts
        body = f"{sid}.{issued}.{logged_in}"
        if not _same(signature, self._sign("session" + chr(0) + body)):
            return None
        try:
            issued_at = float(int(issued))
        except ValueError:
            return None
        if not 0 <= time.time() - issued_at < SESSION_TTL_S:
            return None
        with self._lock:
            if sid in self._ended or issued_at <= self._ended_before:
                return None
        return Session(sid, logged_in == "1", issued_at)

    def end(self, session: Session) -> None:
        """End ``session``: its cookie is refused from now on (a Bearer request has no
        session to end)."""
        if session.id == BEARER_SESSION:
            return
        now = time.time()
        with self._lock:
            ended = self._ended
            for sid in [s for s, at in ended.items() if now - at >= SESSION_TTL_S]:
                del ended[sid]  # expired anyway
            while len(ended) >= MAX_ENDED:
                oldest = min(ended, key=ended.__getitem__)
                self._ended_before = max(self._ended_before, ended.pop(oldest))
            ended[session.id] = session.issued_at

    def csrf_ok(self, session: Session, given: str | None) -> bool:
        """Whether ``given`` is the CSRF token of ``session`` (constant time)."""
        return bool(given) and _same(str(given), self.csrf_token(session))

    def set_cookie(self, request: Request, response: Response, value: str) -> None:
        """Put the session cookie ``value`` on ``response``."""
        response.set_cookie(COOKIE, value, max_age=SESSION_TTL_S, path=_path(request),
                            httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")

    def clear_cookie(self, request: Request, response: Response) -> None:
        """End the session cookie on ``response``."""
        response.delete_cookie(COOKIE, path=_path(request), httponly=True, samesite="strict",
                               secure=request.url.scheme == "https")


def who(session: Session | None) -> str:
    """Who acts, for the log: a short hash of the session's id (never the id, which
    would let a reader of the log act as them), ``bearer``, or ``-`` for no session."""
    if session is None:
        return "-"
    if session.id == BEARER_SESSION:
        return BEARER_SESSION
    return hashlib.sha256(b"taskwarren.web who\x00" + session.id.encode()).hexdigest()[:12]


def _same(given: str, expected: str) -> bool:
    """Whether ``given`` is ``expected``, in constant time; compared as bytes, since
    :func:`hmac.compare_digest` refuses (raises on) text that is not ASCII."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())


def _digest(text: str) -> bytes:
    # Compared as digests: compare_digest then takes as long for any length given.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def _path(request: Request) -> str:
    return str(request.scope.get("root_path") or "") or "/"

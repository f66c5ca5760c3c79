"""Broker URLs: AMQP URLs parsed once, strictly, and passwords masked wherever shown.

An AMQP URL is ``amqp[s]://user:password@host:port/vhost?key=value&...``; a cluster is a
comma-separated list of them. The query takes the parameters of RabbitMQ's URI spec
that mean something to this client (:data:`QUERY_PARAMETERS`); any other is an error.

A password must percent-encode ``/``, ``?``, ``#`` and ``@`` (``%2F``, ``%3F``, ``%23``,
``%40``): unencoded, they end the host part early and the URL means something else
(another host, or the password's tail read as a port). Such a URL is refused with a
message saying so. No error message, and no masked URL, shows any part of a password.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from taskwarren.errors import ConfigurationError

#: URL schemes of the RabbitMQ broker.
AMQP_SCHEMES = ("amqp", "amqps")
#: Query parameters understood (RabbitMQ's URI query parameters that apply to py-amqp).
QUERY_PARAMETERS = (
    "heartbeat", "connection_timeout", "channel_max", "frame_max", "auth_mechanism",
    "cacertfile", "certfile", "keyfile", "verify", "server_name_indication",
)
#: SASL mechanisms ``auth_mechanism`` may name.
AUTH_MECHANISMS = ("plain", "amqplain", "external")
#: The smallest frame AMQP 0-9-1 allows.
MIN_FRAME_MAX = 4096

_SCHEME = re.compile(r"\s*([A-Za-z][A-Za-z0-9+.-]*)://")
#: A comma that starts another URL of a list (a comma inside a password does not).
_NEXT_URL = re.compile(r",\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")
_TLS_ONLY = ("cacertfile", "certfile", "keyfile", "verify", "server_name_indication")


@dataclass(frozen=True, slots=True)
class TLSOptions:
    """TLS settings of an ``amqps://`` endpoint.

    Attributes:
        cacertfile: CA certificates to trust instead of the system's.
        certfile: client certificate to present.
        keyfile: its private key (when not in ``certfile``).
        verify: check the server's certificate (``verify=verify_peer``, the default).
        server_name: name sent as SNI and required in the server's certificate;
            ``None`` sends none and skips the name check.
    """

    cacertfile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    verify: bool = True
    server_name: str | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One broker address from a URL, with its query parameters (password kept out of
    ``repr``). ``None`` means the setting of the same name applies."""

    host: str
    port: int
    userid: str
    password: str
    vhost: str
    ssl: bool
    heartbeat_s: int | None = None
    connect_timeout_s: float | None = None
    channel_max: int | None = None
    frame_max: int | None = None
    auth_mechanisms: tuple[str, ...] = ()
    tls: TLSOptions | None = None

    def __repr__(self) -> str:
        return f"Endpoint({self.host}:{self.port}/{self.vhost})"


def scheme_of(url: str) -> str:
    """The scheme of ``url`` (of its first URL for a list), lower-cased; ``""`` if none."""
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else ""


def split_urls(url: str) -> list[str]:
    """The URLs of a comma-separated list (a comma not followed by ``scheme://`` stays)."""
    return [part.strip() for part in _NEXT_URL.split(url.strip())]


def mask_url(url: str) -> str:
    """Return ``url`` (or a comma-separated list of URLs) with every password masked.

    Everything between ``://`` and the last ``@`` is credentials: only a user name free
    of ``/``, ``?`` and ``#`` is kept, whatever the rest looks like. Without an ``@``, a
    ``host:port`` whose port is not a number may be ``user:password``: all of it after
    ``://`` is masked.
    """
    return ",".join(_mask_one(part) for part in split_urls(url))


#: Query parameters that carry a secret (libpq takes ``?password=``, for one).
_SECRET_QUERY = re.compile(r"([?&](?:password|passwd|pwd|sslpassword|secret|token)=)[^&#]*",
                           re.IGNORECASE)


def _mask_one(part: str) -> str:
    part = _SECRET_QUERY.sub(r"\1***", part)
    match = _SCHEME.match(part)
    if match is None:
        return "***" if "@" in part else part
    head, rest = part[:match.end()], part[match.end():]
    userinfo, at, after = rest.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        if not colon or re.search(r"[/?#\[\]]", user):
            return f"{head}***@{after}"
        return f"{head}{user}:***@{after}"
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    host_port = authority.rpartition("]")[2]
    if ":" in host_port and not host_port.rpartition(":")[2].isdigit():
        return f"{head}***"  # "user:password" with the "@host" forgotten, perhaps
    return part


def parse_urls(url: str) -> list[Endpoint]:
    """Endpoints of a comma-separated list of ``amqp://`` / ``amqps://`` URLs.

    Raises:
        ConfigurationError: a URL that is not AMQP, is ambiguous or malformed, or has a
            query parameter that is unknown or has a bad value. The message says which
            URL of the list and why, and never shows its password.
    """
    parts = split_urls(url)
    return [_parse_one(part, _which(i, len(parts))) for i, part in enumerate(parts)]


def _which(index: int, count: int) -> str:
    return "the broker URL" if count == 1 else f"broker URL #{index + 1} of {count}"


def _parse_one(part: str, which: str) -> Endpoint:
    if scheme_of(part) not in AMQP_SCHEMES:
        raise ConfigurationError(
            f"{which} is not an AMQP URL (amqp:// or amqps://): {mask_url(part)}")
    ssl = scheme_of(part) == "amqps"
    rest = part.split("://", 1)[1]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    tail = rest[len(authority):]
    if "@" in tail or "#" in tail:
        raise ConfigurationError(
            f"{which} is ambiguous: an '@' or '#' after the host. If the user name or "
            "password contains '/', '?', '#' or '@', percent-encode them (%2F, %3F, %23, "
            f"%40); an '@' in the virtual host or a query value as %40. URL: "
            f"{mask_url(part)}")
    userinfo, at, hostport = authority.rpartition("@")
    user, _, password = userinfo.partition(":") if at else ("", "", "")
    host, port = _host_port(hostport, ssl, which)
    path, _, query = tail.partition("?")
    vhost = _vhost(path, which)
    params = _query(query, which)
    if not ssl:
        _no_tls(params, which)
    return Endpoint(
        host=host, port=port,
        userid=unquote(user) if user else "guest",
        password=unquote(password) if password else "guest",
        vhost=vhost, ssl=ssl,
        heartbeat_s=_int(params, "heartbeat", 0, 65535, which),
        connect_timeout_s=_timeout_s(params, which),
        channel_max=_int(params, "channel_max", 1, 65535, which),
        frame_max=_int(params, "frame_max", MIN_FRAME_MAX, 2**32 - 1, which),
        auth_mechanisms=_mechanisms(params, which),
        tls=_tls(params, host, which) if ssl else None,
    )


def _no_tls(params: dict[str, list[str]], which: str) -> None:
    """Refuse TLS parameters on a plain ``amqp://`` URL."""
    given = [k for k in _TLS_ONLY if k in params]
    if given:
        raise ConfigurationError(
            f"{which}: {', '.join(given)} need(s) TLS: use amqps:// (RabbitMQ's TLS port "
            "is 5671)")



def _host_port(hostport: str, ssl: bool, which: str) -> tuple[str, int]:
    default = 5671 if ssl else 5672
    if hostport.startswith("["):  # an IPv6 literal
        host, bracket, after = hostport[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ConfigurationError(f"{which} has a malformed IPv6 host")
        port_text = after[1:]
    else:
        host, _, port_text = hostport.partition(":")
    if not port_text and not hostport.endswith(":"):
        return unquote(host) or "localhost", default
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        # Never echo it: a password with an unencoded '/' ends up here.
        raise ConfigurationError(
            f"{which} has a port that is not a number from 1 to 65535 (an unencoded '/', "
            "'?' or '#' in the password does this: percent-encode it)")
    return unquote(host) or "localhost", int(port_text)


def _vhost(path: str, which: str) -> str:
    segment = path[1:]
    if not segment:
        return "/"
    if "/" in segment:
        raise ConfigurationError(
            f"{which}: the virtual host must be one path segment; percent-encode '/' "
            f"in it as %2F (e.g. /%2F for the default vhost), got {path!r}")
    return unquote(segment)


def _query(query: str, which: str) -> dict[str, list[str]]:
    if not query:
        return {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise ConfigurationError(f"{which} has a malformed query string") from None
    params: dict[str, list[str]] = {}
    for key, value in pairs:
        params.setdefault(key, []).append(value)
    unknown = sorted(k[:40] for k in params if k not in QUERY_PARAMETERS)
    if unknown:
        if "fail_if_no_peer_cert" in unknown:
            unknown[unknown.index("fail_if_no_peer_cert")] += " (a server-side option)"
        raise ConfigurationError(
            f"{which} has unknown query parameter(s) {', '.join(unknown)}; known: "
            f"{', '.join(QUERY_PARAMETERS)}")
    twice = sorted(k for k, v in params.items() if len(v) > 1 and k != "auth_mechanism")
    if twice:
        raise ConfigurationError(f"{which} gives query parameter(s) twice: {', '.join(twice)}")
    return params


def _int(params: dict[str, list[str]], key: str, low: int, high: int,
         which: str) -> int | None:
    if key not in params:
        return None
    text = params[key][0]
    if not text.isdigit() or not low <= int(text) <= high:
        raise ConfigurationError(
            f"{which}: {key} must be a whole number from {low} to {high}, got {text[:40]!r}")
    return int(text)


def _timeout_s(params: dict[str, list[str]], which: str) -> float | None:
    millis = _int(params, "connection_timeout", 1, 2**31, which)  # milliseconds, per the spec
    return None if millis is None else millis / 1000


def _mechanisms(params: dict[str, list[str]], which: str) -> tuple[str, ...]:
    names = tuple(v.lower() for v in params.get("auth_mechanism", []))
    bad = [n[:40] for n in names if n not in AUTH_MECHANISMS]
    if bad:
        raise ConfigurationError(
            f"{which}: auth_mechanism must be one of {', '.join(AUTH_MECHANISMS)}, "
            f"got {', '.join(bad)}")
    return names


def _tls(params: dict[str, list[str]], host: str, which: str) -> TLSOptions:
    files = {}
    for key in ("cacertfile", "certfile", "keyfile"):
        if key in params:
            path = params[key][0]
            if not os.path.isfile(path):
                raise ConfigurationError(f"{which}: {key} {path!r} is not a file")
            files[key] = path
    if "keyfile" in files and "certfile" not in files:
        raise ConfigurationError(f"{which}: keyfile needs certfile")
    verify_text = params.get("verify", ["verify_peer"])[0]
    if verify_text not in ("verify_peer", "verify_none"):
        raise ConfigurationError(
            f"{which}: verify must be verify_peer or verify_none, got {verify_text[:40]!r}")
    verify = verify_text == "verify_peer"
    sni = params.get("server_name_indication", [None])[0]
    if sni is not None and not verify and sni != "disable":
        raise ConfigurationError(
            f"{which}: server_name_indication checks the server's name, which "
            "verify=verify_none turns off; give one or the other")
    server_name = None if sni == "disable" or not verify else sni or host
    return TLSOptions(cacertfile=files.get("cacertfile"), certfile=files.get("certfile"),
                      keyfile=files.get("keyfile"), verify=verify, server_name=server_name)


#: The prefix of every job store's events queue.
EVENTS_QUEUE_PREFIX = "taskwarren.jobs"


def events_queue(store_url: str) -> str:
    """The queue a store's events travel on: ``taskwarren.jobs.`` and a digest of where
    the database is (scheme, host, port, database; for SQLite the file's absolute path),
    never of the user or password. Every process of an app reads the same URL, so they
    agree; set ``TASKWARREN_JOBS_QUEUE`` where two spellings name one database."""
    parts = urlsplit(store_url)
    scheme = parts.scheme.lower().split("+")[0]
    if scheme == "sqlite":
        where = "sqlite:" + os.path.abspath(unquote(parts.path[1:]))
    else:
        scheme = {"postgres": "postgresql", "mariadb": "mysql"}.get(scheme, scheme)
        port = parts.port or {"postgresql": 5432, "mysql": 3306}.get(scheme, 0)
        where = f"{scheme}://{(parts.hostname or '').lower()}:{port}/{unquote(parts.path[1:])}"
    return f"{EVENTS_QUEUE_PREFIX}.{hashlib.sha256(where.encode()).hexdigest()[:12]}"

"""py-amqp's errors (and the socket's) mapped to taskwarren's: the one place that names them.

Every call into py-amqp runs inside :func:`mapped`, which re-raises what py-amqp (or
the socket under it) raises as one of::

    BrokerError
    ├── BrokerConnectionError
    │   ├── LinkLostError        the connection (or its channel) is gone: open it again
    │   └── AccessRefusedError   the login was refused: trying again at once cannot help
    └── RefusedError             the broker refused one operation (a channel error such as
                                 NOT_FOUND or PRECONDITION_FAILED, or a connection error
                                 py-amqp does not count as recoverable on a channel)

Both keep the broker's ``reply_code`` and ``reply_text``, and say whether the broker
closed only the channel (``channel_only``). The rest of the package catches these.

A timed wait that ends with nothing read is not an error: use
:meth:`~taskwarren.brokers.rabbitmq.link.Link.drain`, which returns ``False``.
"""

from __future__ import annotations

import struct
from types import TracebackType

from amqp import exceptions as amqp_errors

from taskwarren.errors import BrokerConnectionError, BrokerError

#: Errors after which the connection is gone and must be opened again.
_LINK_ERRORS: tuple[type[BaseException], ...] = (
    amqp_errors.RecoverableConnectionError,
    amqp_errors.ConnectionError,
    amqp_errors.RecoverableChannelError,
    OSError,  # the socket, TimeoutError included (a stalled link)
    EOFError,
    AttributeError,  # py-amqp after its transport was torn down under it
)

#: Errors py-amqp raises decoding a content header it cannot represent (a timestamp
#: beyond year 9999, a field type it does not know, a truncated table).
HEADER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, OverflowError, OSError, struct.error, amqp_errors.FrameSyntaxError,
)

#: Reply codes of a refused login: access refused, not allowed (vhost).
ACCESS_REFUSED_CODES = (403, 530)
#: Reply code of a declare whose arguments differ from the existing queue's.
PRECONDITION_FAILED = 406
#: Reply code of a passive declare of something that does not exist.
NOT_FOUND = 404


class LinkLostError(BrokerConnectionError):
    """The connection or its channel is gone; the link must be opened again.

    Attributes:
        reply_code: the broker's reply code (``0`` for a socket error).
        reply_text: the broker's reply text (``""`` for a socket error).
        channel_only: the broker closed only the channel.
        cancelled: the broker cancelled our consumer (``basic.cancel``).
    """

    def __init__(self, message: str, reply_code: int = 0, reply_text: str = "",
                 channel_only: bool = False, cancelled: bool = False) -> None:
        super().__init__(message)
        self.reply_code = reply_code
        self.reply_text = reply_text
        self.channel_only = channel_only
        self.cancelled = cancelled


class RefusedError(BrokerError):
    """The broker refused one operation; the link may still work.

    Attributes:
        reply_code: the broker's reply code (404 not found, 406 precondition failed...).
        reply_text: the broker's reply text.
        channel_only: the broker closed only the channel.
    """

    def __init__(self, message: str, reply_code: int = 0, reply_text: str = "",
                 channel_only: bool = False) -> None:
        super().__init__(message)
        self.reply_code = reply_code
        self.reply_text = reply_text
        self.channel_only = channel_only


class AccessRefusedError(BrokerConnectionError):
    """The broker refused the login: trying again at once cannot help."""


def translate(exc: BaseException) -> BaseException:
    """Ours for ``exc`` when it is py-amqp's or the socket's; ``exc`` itself otherwise."""
    if isinstance(exc, BrokerError) or not isinstance(exc, (*_LINK_ERRORS, amqp_errors.AMQPError)):
        return exc
    message = str(exc) or type(exc).__name__
    reply_code = int(getattr(exc, "reply_code", 0) or getattr(exc, "code", 0) or 0)
    reply_text = str(getattr(exc, "reply_text", "") or "")
    channel_only = isinstance(exc, amqp_errors.ChannelError)
    if isinstance(exc, _LINK_ERRORS):
        return LinkLostError(message, reply_code, reply_text, channel_only,
                             cancelled=isinstance(exc, amqp_errors.ConsumerCancelled))
    return RefusedError(message, reply_code, reply_text, channel_only)


class _Mapped:
    """The context manager :func:`mapped` returns (a class: cheap on hot paths)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            return
        ours = translate(exc)
        if ours is not exc:
            raise ours from exc


_MAPPED = _Mapped()


def mapped() -> _Mapped:
    """Inside the block, py-amqp's errors and the socket's are raised as ours (above)."""
    return _MAPPED

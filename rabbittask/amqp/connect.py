"""aiormq connections: failover between the broker's nodes, TLS, and errors a person can act on.

`connect()` is the only place an aiormq connection is opened; `Link` (link.py) holds the ones
that live longer than a call.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

import aiormq
import aiormq.abc

from rabbittask import endpoints
from rabbittask.errors import AccessRefused, PublishAccessRefused, PublishConnectionError
from rabbittask.settings import Settings, host_port, mask_url

CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    ConnectionError,
    OSError,
    RuntimeError,  # aiormq raises RuntimeError("... closed") on a channel of a closed connection
)


def cancelled_here(e: BaseException) -> bool:
    """True when `e` is this task being cancelled, not a CancelledError aiormq raised as its connection closed.

    aiormq cancels pending calls when their connection closes under them: a loop that reconnects
    treats those as a lost connection, and only its own cancellation as the end.
    """
    current = asyncio.current_task()
    return isinstance(e, asyncio.CancelledError) and current is not None and current.cancelling() > 0


# aiormq cancels pending calls (CancelledError) when their connection closes under them.
CHANNEL_OPEN_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    aiormq.exceptions.AMQPError,
    asyncio.CancelledError,
)


def amqp_url(settings: Settings, role: str, url: str | None = None) -> str:
    """A broker URL (the first node's by default) with heartbeat and connection name set, as aiormq reads them."""
    parts = urlsplit(url or settings.broker_urls[0])
    query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
    query.setdefault("heartbeat", str(settings.heartbeat_s))
    query.setdefault("name", f"rabbittask {role} pid={os.getpid()}")
    return urlunsplit(parts._replace(query=urlencode(query)))


class _Connection(aiormq.Connection):
    # aiormq gives up on a silent broker after (heartbeat + 1) x 3 s; 1.5 keeps detection within
    # the AMQP norm of two missed heartbeats (checked every heartbeat / 2): 2 x heartbeat + 2 s.
    HEARTBEAT_GRACE_MULTIPLIER = 1.5  # type: ignore[assignment]


async def _open(url: str, context: ssl.SSLContext | None) -> aiormq.abc.AbstractConnection:
    connection = _Connection(url, context=context)
    await connection.connect()
    return connection


async def connect(settings: Settings, role: str) -> aiormq.abc.AbstractConnection:
    """Open an aiormq connection to the first node that accepts one (see endpoints.py), with clear errors.

    Each node gets the connect timeout. When no node accepts, a refused login or virtual host
    (`AccessRefused`) wins over the other failures: it is the one a person must act on.
    """
    failures: list[str] = []
    refused: AccessRefused | None = None
    for url in endpoints.candidates(settings):
        try:
            connection = await _connect_one(settings, url, role)
        except AccessRefused as e:
            refused = refused or e
            continue
        except PublishConnectionError as e:
            endpoints.unreachable(settings, url)
            failures.append(str(e))
            continue
        endpoints.connected(settings, url)
        return connection
    if refused is not None:
        raise refused
    if len(failures) == 1:
        raise PublishConnectionError(failures[0])
    raise PublishConnectionError(f"no node of the broker accepted a connection: {'; '.join(failures)}")


async def _connect_one(settings: Settings, url: str, role: str) -> aiormq.abc.AbstractConnection:
    where = host_port(url)
    try:
        context = endpoints.ssl_context(settings, url)
        return await asyncio.wait_for(_open(amqp_url(settings, role, url), context), settings.connect_timeout_s)
    except TimeoutError:
        raise PublishConnectionError(
            f"cannot connect to the broker at {where}: no answer within {settings.connect_timeout_s:g} s"
        ) from None
    except aiormq.exceptions.ProbableAuthenticationError:
        raise PublishAccessRefused(
            f"the broker at {where} refused the login: check the user and password in the broker URL"
        ) from None
    except aiormq.exceptions.ConnectionNotAllowed as e:
        raise PublishAccessRefused(
            f"the broker at {where} refused access to virtual host {vhost(url)!r}: check the vhost in the URL "
            f"and the user's permissions ({mask_url(reply_text(e))})"
        ) from None
    except aiormq.exceptions.InvalidFrameError as e:
        if "Connection.Close" not in str(e):
            raise PublishConnectionError(f"cannot connect to the broker at {where}: {mask_url(str(e))}") from None
        # aiormq reports a close in answer to connection.open so; RabbitMQ sends it when the user may not use the vhost
        raise PublishAccessRefused(
            f"the broker at {where} refused access to virtual host {vhost(url)!r}: check the vhost in the URL "
            "and the user's permissions"
        ) from None
    except CONNECTION_ERRORS + (aiormq.exceptions.AMQPError,) as e:
        why = endpoints.explain(settings, url, e)
        if why is None:
            why = f"cannot connect to the broker at {where}: {mask_url(str(e) or type(e).__name__)}"
            why += " (is RabbitMQ running and reachable?)"
        raise PublishConnectionError(why) from None


def access_refused(
    settings: Settings, e: BaseException, doing: str, error: type[AccessRefused] = AccessRefused
) -> AccessRefused:
    """The error for a 403 from the broker: which user could not do what, and the ways out."""
    user = urlsplit(settings.broker_urls[0]).username or "guest"
    return error(
        f"the broker refused user {user!r} permission to {doing}: {mask_url(reply_text(e))}. Grant the "
        "permission (docs/operations.md, least-privilege users), or apply the topology as an admin "
        "(`rabbittask topology apply`) and set declare_topology=False"
    )


def vhost(url: str) -> str:
    """The virtual host a URL names ("/" when it names none)."""
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def reply_text(e: BaseException) -> str:
    """The broker's reply text carried by an aiormq exception (or its type's name)."""
    return " ".join(str(a) for a in e.args) or type(e).__name__

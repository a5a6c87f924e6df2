"""pika connections: parameters per node (failover order, TLS, bounded waits), errors, quiet close.

pika's `BlockingConnection` serves sync publishing (publish/sync.py), sync RPC (results/sync_rpc.py)
and the CLI commands. `connect()` is the only place one is opened; `BlockingLink` (link.py) holds
the ones that live longer than a command.
"""

from __future__ import annotations

import contextlib
import logging
import os
from urllib.parse import urlsplit

import pika
import pika.exceptions

from rabbittask import endpoints
from rabbittask.errors import PublishAccessRefused, PublishConnectionError
from rabbittask.settings import Settings, host_port, mask_url

log = logging.getLogger(__name__)

ACCESS_REFUSED = 403
NOT_FOUND = 404


def connection_params(settings: Settings, role: str) -> list[pika.URLParameters]:
    """pika parameters of each node, in failover order (see endpoints.py), every wait bounded by the settings.

    `pika.BlockingConnection` takes the list and tries each node once, in order.
    """
    return [_params(settings, url, role) for url in endpoints.candidates(settings)]


def _params(settings: Settings, url: str, role: str) -> pika.URLParameters:
    params = pika.URLParameters(url)
    context = endpoints.ssl_context(settings, url)
    if context is not None:
        params.ssl_options = pika.SSLOptions(context, server_hostname=endpoints.hostname(url))
    params.socket_timeout = settings.connect_timeout_s
    params.stack_timeout = settings.connect_timeout_s
    params.blocked_connection_timeout = settings.publish_timeout_s
    params.connection_attempts = 1
    params.heartbeat = settings.heartbeat_s
    params.client_properties = {"connection_name": f"rabbittask {role} pid={os.getpid()}"}
    return params


def connect(settings: Settings, role: str, action: str = "connect to") -> pika.BlockingConnection:
    """A connection to the first node that accepts one; else `PublishConnectionError` (`PublishAccessRefused`).

    `action` names what the caller could not do, in the error ("cannot publish to the broker at ...").
    """
    params = connection_params(settings, role)  # outside the try: a bad TLS file is a ConfigError, not an outage
    try:
        connection = pika.BlockingConnection(params)
    except Exception as e:  # noqa: BLE001 - pika raises connection-workflow errors outside AMQPError
        endpoints.unreachable(settings, endpoints.candidates(settings)[0])  # the next attempt starts elsewhere
        raise connect_error(settings, e, action) from None
    _opened(settings, connection)
    return connection


def _opened(settings: Settings, connection: pika.BlockingConnection) -> None:
    """Remember which node a new connection reached, so the next one tries it first."""
    params = connection._impl.params
    for url in settings.broker_urls:
        parts = urlsplit(url)
        if (parts.hostname or "localhost") == params.host and (parts.port or params.port) == params.port:
            endpoints.connected(settings, url)
            return


def _innermost(e: BaseException) -> str:
    """What went wrong under pika's wrappers: `[Errno 111] Connection refused`, not `AMQPConnectionError`."""
    for _ in range(5):  # pika wraps the socket error: in args, or (connector errors) in `.exception`
        inner = e.args[0] if e.args and isinstance(e.args[0], BaseException) else getattr(e, "exception", None)
        if not isinstance(inner, BaseException):
            break
        e = inner
    return str(e) or type(e).__name__


def connect_error(settings: Settings, e: BaseException, action: str = "connect to") -> PublishConnectionError:
    """A `PublishConnectionError` that says where and why, with the password masked."""
    where = host_port(settings.broker_url)
    if isinstance(e, pika.exceptions.ProbableAuthenticationError | pika.exceptions.AuthenticationError):
        return PublishAccessRefused(
            f"cannot {action} the broker at {where}: the broker refused the login: check the user and "
            "password in the broker URL"
        )
    if isinstance(e, pika.exceptions.ProbableAccessDeniedError):
        return PublishAccessRefused(
            f"cannot {action} the broker at {where}: access to the virtual host was refused: check the vhost "
            "in the URL and the user's permissions"
        )
    if isinstance(e, pika.exceptions.ChannelClosedByBroker) and e.reply_code == ACCESS_REFUSED:
        user = urlsplit(settings.broker_urls[0]).username or "guest"
        return PublishAccessRefused(
            f"the broker refused user {user!r} an operation: {mask_url(e.reply_text)}. Grant the permission "
            "(docs/operations.md, least-privilege users), or apply the topology as an admin "
            "(`rabbittask topology apply`) and set declare_topology=False"
        )
    if isinstance(e, pika.exceptions.ConnectionBlockedTimeout):
        why = (
            f"the broker blocked publishing for more than {settings.publish_timeout_s:g} s "
            "(a memory or disk alarm); nothing was confirmed"
        )
    else:
        urls = settings.broker_urls  # pika reports the last node's error: explain it only for one node
        tls = endpoints.explain(settings, urls[0], e) if len(urls) == 1 else None
        why = tls or mask_url(_innermost(e)) + " (is RabbitMQ running and reachable?)"
    return PublishConnectionError(f"cannot {action} the broker at {where}: {why}")


def close_quietly(connection: pika.BlockingConnection, *, abort: bool = False) -> None:
    """Close a connection that may be broken; its errors must not mask the real one.

    `abort`: drop it without the close handshake a stuck broker never answers. A connection the
    broker already closed is aborted too: it still holds its I/O loop's sockets.
    """
    if abort or not connection.is_open:
        _abort(connection)
        return
    try:
        connection.close()
    except Exception:  # noqa: BLE001 - closing a broken connection must not mask the real error
        log.debug("closing a broken connection failed", exc_info=True)
        _abort(connection)


def _abort(connection: pika.BlockingConnection) -> None:
    """Close a pika connection's socket and I/O loop at once, without waiting for the broker."""
    impl = connection._impl
    try:
        # With the reason set, pika reports a lost stream instead of logging an AssertionError traceback.
        impl._terminate_stream(pika.exceptions.StreamLostError("dropped by rabbittask: the broker did not answer"))
        impl.ioloop.process_timeouts()
    except Exception:  # noqa: BLE001 - the connection is being thrown away
        log.debug("aborting a connection failed", exc_info=True)
    finally:
        with contextlib.suppress(Exception):
            impl.ioloop.close()

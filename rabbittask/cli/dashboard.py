"""`rabbittask dashboard`: serve the web dashboard of an app (needs the `dashboard` extra)."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import signal
import socket
from types import FrameType

import click

from rabbittask.cli.common import APP_OPTION, load_app
from rabbittask.errors import RabbitTaskError
from rabbittask.settings import Settings

MISSING_EXTRA = (
    "the dashboard needs the 'dashboard' extra (Starlette and uvicorn), which is not installed "
    "(missing module {name!r}): pip install 'rabbittask[dashboard]'"
)


@click.command()
@APP_OPTION
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (keep it local or proxy it)."
)
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port (0: any free one).")
@click.option(
    "--token",
    envvar="RABBITTASK_DASHBOARD_TOKEN",
    default=None,
    help="Access token (default: a random one, printed at start). Also RABBITTASK_DASHBOARD_TOKEN.",
)
def dashboard(app_spec: str, host: str, port: int, token: str | None) -> None:
    """Serve a web page of live workers, queues, task rates, failures and dead letters."""
    try:
        import starlette  # noqa: F401 - only checks that the extra is there
        import uvicorn
    except ImportError as e:
        raise click.ClickException(MISSING_EXTRA.format(name=e.name)) from None
    from rabbittask.dashboard.auth import MIN_TOKEN_CHARS, new_token
    from rabbittask.dashboard.web import create_app

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)  # it logs each failed connect; the dashboard says it once
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise click.ClickException(f"--token is too short: use at least {MIN_TOKEN_CHARS} random characters")
    app = load_app(app_spec)
    sock = _listen(host, port)
    try:
        asyncio.run(_check_broker(app.settings))
    except RabbitTaskError as e:
        sock.close()
        raise click.ClickException(f"cannot start the dashboard: {e}") from None
    token = token or new_token()
    shown_host = f"[{host}]" if ":" in host else host
    click.echo(f"rabbittask dashboard of {app.name} on http://{shown_host}:{sock.getsockname()[1]}/?token={token}")
    click.echo("anyone with this URL can replay and purge dead letters; stop with Ctrl-C")
    if not _loopback(host):
        click.echo(
            f"warning: listening on {host} over plain HTTP: the token crosses the network unencrypted; "
            "prefer an SSH tunnel or a TLS proxy",
            err=True,
        )
    config = uvicorn.Config(create_app(app, token), log_level="warning", access_log=False, lifespan="on")
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler it found:
    # this one, so that a stop is a clean exit 0 (no "Aborted!", no death by signal).
    previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except _Stop:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
        app.close()
    click.echo("dashboard stopped")


class _Stop(Exception):
    """Raised by the signal handler once uvicorn has shut down."""


def _stopped(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def _listen(host: str, port: int) -> socket.socket:
    """Bind before anything else, so a port in use is reported plainly (uvicorn would log a traceback)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise click.ClickException(f"cannot listen on {host}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise click.ClickException(
                f"cannot listen on {host}:{port}: the port is in use by another program; choose another with --port"
            ) from None
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def _check_broker(settings: Settings) -> None:
    from rabbittask.amqp.link import Link

    async with Link(settings, "dashboard check"):
        pass  # connected: the broker answers and takes the login

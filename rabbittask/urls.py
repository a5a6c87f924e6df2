"""URLs in messages and settings: passwords masked, `host:port` for errors, what an AMQP URL must look like."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@]*:)(?P<password>[^@/]*)@", re.IGNORECASE)


def mask_url(text: str) -> str:
    """Return `text` with the password of every URL in it replaced by `***`."""
    return _PASSWORD.sub(lambda m: f"{m.group('head')}***@", text)


def check_amqp_url(url: str) -> None:
    """Raise `ValueError` (masked, saying what a broker URL looks like) if `url` is not an AMQP URL."""
    example = "use amqp://user:password@host:5672/vhost (amqps:// for TLS; several: comma-separated)"
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps"):
        raise ValueError(f"broker_url {mask_url(url)!r} is not an AMQP URL: {example}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(f"broker_url {mask_url(url)!r} has a port that is not a number: {example}") from None


def host_port(url: str) -> str:
    """Return `host:port` of an AMQP URL (of each, comma-separated, for a list), for error messages."""
    if "," in url:
        return ", ".join(host_port(u.strip()) for u in url.split(",") if u.strip())
    parts = urlsplit(url)
    default = 5671 if parts.scheme == "amqps" else 5672
    return f"{parts.hostname or 'localhost'}:{parts.port or default}"

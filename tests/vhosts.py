"""A virtual host of its own for a test that uses fixed queue names (the demo, the documentation samples).

Where the broker is the local node (`rabbitmqctl` answers), the test gets a fresh vhost, deleted with
everything in it afterwards, so fixed names never meet another test's or a leftover. Elsewhere it gets
None and runs on the broker URL's own vhost.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote, urlsplit, urlunsplit


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def own_vhost(broker_url: str, prefix: str) -> Iterator[str | None]:
    """The broker URL on a new vhost named `<prefix>-<random>`, or None where none can be made here."""
    parts = urlsplit(broker_url)
    if parts.hostname not in ("localhost", "127.0.0.1") or shutil.which("rabbitmqctl") is None:
        yield None
        return
    if (parts.port or 5672) != 5672:  # a throwaway node: rabbitmqctl would reach the default node, not it
        yield None
        return
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    try:
        _rabbitmqctl("add_vhost", name)
        _rabbitmqctl("set_permissions", "-p", name, parts.username or "guest", ".*", ".*", ".*")
    except (OSError, subprocess.SubprocessError):
        yield None
        return
    try:
        yield urlunsplit(parts._replace(path=f"/{quote(name, safe='')}"))
    finally:
        _rabbitmqctl("delete_vhost", name)

"""Read what a broker has: through the management HTTP API, or by passive declares over AMQP."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pika
import pika.exceptions

from rabbittask.errors import BrokerError, ConnectionLost
from rabbittask.ops.admin.compare import Live
from rabbittask.settings import mask_url
from rabbittask.topology import Declaration, ExchangeDecl, QueueDecl

NOT_FOUND = 404
QUEUE_COLUMNS = "name,type,durable,auto_delete,exclusive,arguments"
EXCHANGE_COLUMNS = "name,type,durable,auto_delete,internal,arguments"


class Management:
    """A minimal client of the management HTTP API (GET only); credentials from its URL or the AMQP URL."""

    def __init__(self, url: str, amqp_url: str = "", timeout_s: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BrokerError(f"management URL {mask_url(url)!r} is not an http(s) URL, e.g. http://host:15672/")
        fallback = urlsplit(amqp_url) if amqp_url else None
        user = unquote(parts.username or (fallback.username if fallback else None) or "guest")
        password = unquote(parts.password or (fallback.password if fallback else None) or "guest")
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        self.base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self.user = user
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.timeout_s = timeout_s

    def get(self, path: str) -> Any:
        """GET `/api/<path>` and return the decoded JSON; raise `BrokerError` saying what went wrong."""
        request = urllib.request.Request(f"{self.base}/api/{path}", headers={"Authorization": self._auth})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 - http(s) only
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            e.close()  # the error holds the open response
            if e.code == 401:
                raise BrokerError(
                    f"the management API at {self.base} refused the login of user {self.user!r} "
                    "(it needs the management or monitoring tag)"
                ) from None
            if e.code == NOT_FOUND:
                raise BrokerError(f"the management API at {self.base} has no /api/{path} (unknown vhost?)") from None
            raise BrokerError(f"the management API at {self.base} answered {e.code} for /api/{path}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise ConnectionLost(f"cannot reach the management API at {self.base}: {mask_url(str(reason))}") from None

    def read(self, vhost: str) -> Live:
        """Everything in `vhost`: exchanges, queues (with type and policy) and bindings."""
        v = quote(vhost, safe="")
        exchanges = self.get(f"exchanges/{v}?columns={EXCHANGE_COLUMNS}")
        queues = self.get(f"queues/{v}?columns={QUEUE_COLUMNS}")
        bindings = self.get(f"bindings/{v}")
        # Read the policies themselves: a queue's own policy fields arrive with its stats, seconds later.
        policies = self.get(f"policies/{v}") + [{**p, "operator": True} for p in self.get(f"operator-policies/{v}")]
        return Live(
            exchanges={x["name"]: x for x in exchanges if x["name"] and not x["name"].startswith("amq.")},
            queues={q["name"]: q for q in queues if not q.get("exclusive")},
            bindings=[b for b in bindings if b.get("source")],  # "" is the default exchange's implicit binding
            complete=True,
            policies=policies,
        )


def exists(connection: pika.BlockingConnection, kind: str, name: str) -> bool:
    """True if a passive declare of exchange or queue `name` succeeds (a 404 closes only its own channel)."""
    channel = connection.channel()
    try:
        if kind == "exchange":
            channel.exchange_declare(name, passive=True)
        else:
            channel.queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as e:
        if e.reply_code == NOT_FOUND:
            return False
        raise BrokerError(f"the broker refused a passive declare of {kind} {name!r}: {e.reply_text}") from None
    channel.close()
    return True


def read_passive(connection: pika.BlockingConnection, decls: Sequence[Declaration]) -> Live:
    """Which of the declared exchanges and queues exist (nothing else can be read this way)."""
    live = Live(complete=False)
    for d in decls:
        if isinstance(d, ExchangeDecl) and exists(connection, "exchange", d.name):
            live.exchanges[d.name] = None
        elif isinstance(d, QueueDecl) and exists(connection, "queue", d.name):
            live.queues[d.name] = None
    return live

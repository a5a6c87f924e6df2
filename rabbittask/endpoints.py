"""Where the broker is: the node URLs a client fails over between, and TLS for `amqps://` URLs.

A cluster's clients get every node's URL, comma-separated (`broker_url="amqp://n1/,amqp://n2/"`).
Each new connection tries them in order, starting with the node that last accepted one in this
process: a client stays on a healthy node, moves on when its node refuses or does not answer, and
comes back to the first only when the others fail too. A connection that drops is simply opened
again the same way; what was confirmed is on the quorum queue's majority, whichever node answers.

TLS: an `amqps://` URL verifies the broker's certificate against `tls_ca_file` (or the system's
CAs) and the host name of the URL, and presents `tls_cert_file`/`tls_key_file` when set. Failures
are explained in words a person can act on (`explain`), never with the URL's password.
"""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

from rabbittask.errors import ConfigError
from rabbittask.settings import Settings, host_port

_start: dict[str, int] = {}  # broker_url -> index of the node to try first
_contexts: dict[tuple[str | None, str | None, str | None], ssl.SSLContext] = {}


def candidates(settings: Settings) -> list[str]:
    """The node URLs in the order a new connection tries them."""
    urls = settings.broker_urls
    first = _start.get(settings.broker_url, 0) % len(urls)
    return urls[first:] + urls[:first]


def connected(settings: Settings, url: str) -> None:
    """Remember that `url` accepted a connection: the next one tries it first."""
    _start[settings.broker_url] = settings.broker_urls.index(url)


def unreachable(settings: Settings, url: str) -> None:
    """Remember that `url` failed: the next connection starts with the node after it."""
    urls = settings.broker_urls
    i = urls.index(url)
    if _start.get(settings.broker_url, 0) % len(urls) == i:
        _start[settings.broker_url] = (i + 1) % len(urls)


def ssl_context(settings: Settings, url: str) -> ssl.SSLContext | None:
    """The TLS context of an `amqps://` URL (hostname and chain verified); None for `amqp://`."""
    if urlsplit(url).scheme != "amqps":
        return None
    key = (settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file)
    context = _contexts.get(key)
    if context is None:
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.tls_ca_file)
            if settings.tls_cert_file:
                context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(
                f"cannot load the TLS files (tls_ca_file={settings.tls_ca_file!r}, tls_cert_file="
                f"{settings.tls_cert_file!r}, tls_key_file={settings.tls_key_file!r}): {e}"
            ) from None
        _contexts[key] = context
    return context


def hostname(url: str) -> str:
    """The host a URL names (what the broker's certificate must list)."""
    return urlsplit(url).hostname or "localhost"


def explain(settings: Settings, url: str, e: BaseException) -> str | None:
    """A sentence for a TLS failure or a TLS/plaintext mismatch, or None when `e` is something else."""
    where = host_port(url)
    chain = _chain(e)
    for c in chain:
        if isinstance(c, ssl.SSLCertVerificationError):
            reason = c.verify_message or str(c)
            if "mismatch" in reason:
                return (
                    f"TLS: the certificate of the broker at {where} is not valid for host {hostname(url)!r} "
                    f"({reason}): connect with a host name that the certificate lists"
                )
            return (
                f"TLS: the certificate of the broker at {where} is not trusted ({reason}): set tls_ca_file to "
                "the CA that signed it"
            )
    text = " ".join(f"{type(c).__name__} {c}" for c in chain)
    cut = any(m in text for m in _CUT_MARKERS)
    if urlsplit(url).scheme == "amqps":
        if cut or "certificate required" in text or "unknown ca" in text.lower():
            # TLS 1.3: the broker checks the client's certificate after the handshake and hangs up.
            if not settings.tls_cert_file:
                return (
                    f"TLS: the broker at {where} closed the connection: it requires a client certificate and "
                    "none was presented; set tls_cert_file and tls_key_file"
                )
            return (
                f"TLS: the broker at {where} closed the connection: it did not accept the client certificate "
                f"{settings.tls_cert_file!r}; it must be signed by a CA the broker trusts (its cacertfile)"
            )
        if any(isinstance(c, ssl.SSLError) for c in chain):
            return f"TLS handshake with the broker at {where} failed: {_ssl_reason(text)}"
        return None
    if cut:
        return (
            f"the broker at {where} closed the connection before the AMQP handshake: if it accepts only "
            "TLS, use an amqps:// URL (with tls_ca_file)"
        )
    return None


_CUT_MARKERS = ("ConnectionResetError", "SSLEOFError", "StreamLostError", "IncompatibleProtocolError", "reset")


def _chain(e: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    todo: list[BaseException] = [e]
    while todo and len(chain) < 8:
        c = todo.pop(0)
        if c in chain:
            continue
        chain.append(c)
        todo += [a for a in getattr(c, "args", ()) if isinstance(a, BaseException)]
        todo += [x for x in (c.__cause__, c.__context__) if x is not None]
    return chain


def _ssl_reason(text: str) -> str:
    for marker in ("alert", "certificate", "handshake"):
        i = text.lower().find(marker)
        if i >= 0:
            return text[max(0, i - 20) : i + 60].strip(" ()[]")
    return text[:120]

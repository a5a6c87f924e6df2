"""Optional message signing: HMAC-SHA256 over what a task message asks a worker to do.

A publisher with `signing_key_id` set writes `rt-signature: <key id>:<hex digest>`; a worker with
`signing_keys` set runs only messages whose signature verifies with the key the id names, and
dead-letters the others (unsigned, unknown key id, tampered) with the reason, *before* the body is
decoded. The digest covers the task name (`type`), the task id (`message_id`), the expiry
(`rt-expires`, empty when absent) and the body: what runs, which run it is, until when, and with
which arguments. Bookkeeping headers (`rt-attempt`, ...) are not covered: a worker's own retry
copies keep the signature as they keep these four.

Rotation: add the new key to every worker's `signing_keys`, switch publishers' `signing_key_id`,
and drop the old key once no message signed with it can still be queued.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from rabbittask.errors import SignatureInvalid
from rabbittask.message import H_EXPIRES, H_SIGNATURE, Outgoing
from rabbittask.settings import Settings

_DOMAIN = b"rabbittask-signature-v1"


def digest(key: bytes, task_name: str, message_id: str, expires: Any, body: bytes) -> str:
    """The hex HMAC-SHA256 of a message's signed fields (see the module docstring)."""
    if isinstance(expires, bytes):
        expires = expires.decode("utf-8", "replace")
    fields = [_DOMAIN, task_name.encode(), message_id.encode(), str(expires or "").encode()]
    # Each field is length-prefixed, so no two different messages sign the same bytes.
    data = b"".join(len(f).to_bytes(4, "big") + f for f in fields) + body
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def sign(settings: Settings, msg: Outgoing) -> None:
    """Add `rt-signature` to `msg` if the settings name an active signing key."""
    key_id = settings.signing_key_id
    if key_id is None:
        return
    key = settings.signing_keys[key_id].get_secret_value().encode()
    headers = msg.headers if msg.headers is not None else {}
    value = digest(key, msg.task_name, msg.message_id, headers.get(H_EXPIRES), msg.body)
    headers[H_SIGNATURE] = f"{key_id}:{value}"
    msg.headers = headers


def verify(
    keys: Mapping[str, SecretStr], task_name: str, message_id: str, headers: Mapping[str, Any] | None, body: bytes
) -> None:
    """Raise `SignatureInvalid` saying why, unless the message is signed with one of `keys`."""
    signature = (headers or {}).get(H_SIGNATURE)
    if isinstance(signature, bytes):
        signature = signature.decode("utf-8", "replace")
    if not isinstance(signature, str) or ":" not in signature:
        raise SignatureInvalid(f"message is not signed (no {H_SIGNATURE} header) and this worker requires signatures")
    key_id, _, given = signature.rpartition(":")
    key = keys.get(key_id)
    if key is None:
        raise SignatureInvalid(f"message is signed with key id {key_id!r}, which this worker does not have")
    expected = digest(key.get_secret_value().encode(), task_name, message_id, (headers or {}).get(H_EXPIRES), body)
    if not hmac.compare_digest(expected, given):
        raise SignatureInvalid(
            f"signature of key {key_id!r} does not match: the body, task name, id or expiry was changed after signing"
        )

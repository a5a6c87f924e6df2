"""The control plane on the wire: commands, replies, revocation records, and the streams' arguments.

A command is a JSON object published to the `<exchange>.control` fanout exchange, `type`
`control.<command>`, `message_id` its id, `reply_to` the caller's direct reply-to queue:

    {"command": "ping", "arguments": {}, "destination": ["host:pid", ...] | null, "ts": 1765000000.0}

Each worker child answers over direct reply-to, `correlation_id` the command's id:

    {"worker": "host:pid", "host", "pid", "ppid", "ok": true, "reply": ..., "error": ""}

A revocation is a record appended to the `<exchange>.revoked` stream (and broadcast as the
`revoke` command, for speed): `{"ids": [...], "terminate": false, "ts": ...}`. With signing on,
commands and records are signed like task messages (signing.py) over `control.<command>`, their id
and body; a worker with `signing_keys` ignores (and logs) what does not verify.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import aiormq
import aiormq.abc
from pydantic import BaseModel, ConfigDict, Field

from rabbittask.errors import SignatureInvalid
from rabbittask.message import H_SIGNATURE
from rabbittask.settings import Settings
from rabbittask.signing import digest, verify

COMMANDS = ("ping", "active", "scheduled", "registered", "stats", "queues", "revoke")
INSPECT = ("ping", "active", "scheduled", "registered", "stats", "queues")
BROADCASTS = (*INSPECT, "pool_grow", "pool_shrink")  # commands that every child answers


class Command(BaseModel):
    """A control command as broadcast to every worker child."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    command: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    destination: tuple[str, ...] | None = None  # "host:pid" of workers (supervisor or child pid); None: all
    ts: float = 0.0

    def addressed_to(self, host: str, pids: Sequence[int]) -> bool:
        """True if this command is for every worker or names `host` with one of `pids`."""
        if self.destination is None:
            return True
        return any(f"{host}:{pid}" in self.destination for pid in pids)


class Revocation(BaseModel):
    """A revocation as kept in the `<exchange>.revoked` stream."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    ids: tuple[str, ...]
    terminate: bool = False
    ts: float = 0.0


def worker_id(host: str, pid: int) -> str:
    """How a worker process is named in replies and `--destination`: `host:pid`."""
    return f"{host}:{pid}"


def outgoing(settings: Settings, command: str, body: Mapping[str, Any], **properties: Any) -> tuple[bytes, Any]:
    """The body and AMQP properties of a control message `command`, signed when the settings say so."""
    data = json.dumps(body, separators=(",", ":")).encode()
    message_id = uuid.uuid4().hex
    headers: dict[str, Any] = {}
    key_id = settings.signing_key_id
    if key_id is not None:
        key = settings.signing_keys[key_id].get_secret_value().encode()
        headers[H_SIGNATURE] = f"{key_id}:{digest(key, f'control.{command}', message_id, '', data)}"
    props = aiormq.spec.Basic.Properties(
        content_type="application/json",
        message_id=message_id,
        message_type=f"control.{command}",
        headers=headers,
        **properties,
    )
    return data, props


def authentic(settings: Settings, message: aiormq.abc.DeliveredMessage) -> str:
    """Why a control message must be ignored ("" when it may be obeyed): a bad or missing signature."""
    if not settings.signing_keys:
        return ""
    props = message.header.properties
    try:
        verify(settings.signing_keys, props.message_type or "", props.message_id or "", props.headers, message.body)
    except SignatureInvalid as e:
        return str(e)
    return ""


def command_body(command: str, arguments: Mapping[str, Any], destination: Sequence[str] | None) -> dict[str, Any]:
    return {
        "command": command,
        "arguments": dict(arguments),
        "destination": list(destination) if destination is not None else None,
        "ts": time.time(),
    }


def reply_body(ppid: int, reply: Any = None, error: str = "") -> dict[str, Any]:
    """What a child answers: who it is, and its reply (or why it could not give one)."""
    host, pid = socket.gethostname(), os.getpid()
    return {
        "worker": worker_id(host, pid),
        "host": host,
        "pid": pid,
        "ppid": ppid,
        "ok": not error,
        "reply": reply,
        "error": error,
    }

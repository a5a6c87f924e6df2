"""Settings: one frozen model, read from arguments and `RABBITTASK_*` environment variables."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rabbittask.errors import ConfigError
from rabbittask.explain import describe, extra_names, unknown_names
from rabbittask.urls import check_amqp_url, host_port, mask_url

__all__ = ["ENV_PREFIX", "QueueType", "Settings", "check_amqp_url", "host_port", "mask_url"]

QueueType = Literal["quorum", "classic"]
ENV_PREFIX = "RABBITTASK_"


class Settings(BaseSettings):
    """App settings; every field can be set as `RABBITTASK_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    broker_url: str = Field(
        "amqp://guest:guest@localhost:5672/",
        description="AMQP URL of the broker, or the URLs of a cluster's nodes separated by commas (clients fail over "
        "between them in order).",
    )
    exchange: str = Field("rabbittask", description="Name of the direct exchange that routes tasks to queues.")
    default_queue: str = Field("default", description="Queue of tasks that do not name one.")
    queue_type: QueueType = Field("quorum", description="Type of task queues that do not choose one.")
    delivery_limit: int = Field(
        20, ge=1, description="Quorum queues: deliveries of one message before the broker dead-letters it."
    )
    connect_timeout_s: float = Field(5.0, gt=0, description="How long to wait for a connection to the broker.")
    publish_timeout_s: float = Field(5.0, gt=0, description="How long a publish waits for the broker's confirm.")
    heartbeat_s: int = Field(30, ge=0, description="AMQP heartbeat interval negotiated with the broker.")
    prefetch: int = Field(
        16,
        ge=1,
        description="Unacked messages a worker consumer may hold (per consumer). Unset, workers start at 16 and "
        "adapt; set, it is pinned.",
    )
    batch_in_flight: int = Field(1000, ge=1, description="Unconfirmed publishes in flight inside a batch.")
    max_payload_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1,
        description="Largest message body a client sends (keep it below the broker's max_message_size).",
    )
    # Retry defaults of every task; a task overrides each with the option of the same name.
    max_retries: int | None = Field(
        3, ge=0, description="Retries of a failed task after its first run (None: no limit)."
    )
    retry_backoff: bool | float = Field(
        True,
        description="Exponential back-off: the first retry waits this many seconds (True: 1 s), each next one "
        "twice as long; False: every retry waits retry_delay.",
    )
    retry_backoff_max: float = Field(600.0, gt=0, description="Longest wait before a retry, in seconds.")
    retry_jitter: bool = Field(
        True, description="Pick each retry's wait at random between half and all of it, so failures spread out."
    )
    retry_delay: float = Field(1.0, ge=0, description="Wait before each retry when retry_backoff is False, in seconds.")
    delay_queue_type: QueueType = Field(
        "quorum", description="Type of the delay-ladder queues that hold countdown, eta and retry messages."
    )
    result_backend: str | None = Field(
        None,
        description="URL of the result backend that stores task results (e.g. redis://localhost:6379/0); "
        "its scheme picks the plugin. None: results only over direct reply-to (.call()).",
    )
    accept_celery: bool = Field(
        False,
        description="Every queue of the app is a Celery queue: taken as Celery declared it, its workers run Celery "
        "protocol 2 JSON messages, its tasks send Celery messages (per task: `@app.task(accept_celery=True)`).",
    )
    celery_result_backend: str | None = Field(
        None,
        description="Where Celery callers read results of Celery messages: `rpc://` (a reply to the message's "
        "reply_to) or a `redis://` URL (Celery's key layout); None: no results, as Celery's default.",
    )
    result_expires_s: float = Field(
        86400.0, gt=0, description="How long a stored result is kept before the backend expires it (default 1 day)."
    )
    alarm_wait_s: float = Field(
        300.0,
        gt=0,
        description="How long a worker waits for the broker's memory or disk alarm to clear while it publishes a "
        "retry's copy or a dead letter (the message stays unacked meanwhile), before it hands the message back "
        "to the queue.",
    )
    result_store_timeout_s: float = Field(
        10.0,
        gt=0,
        description="How long a worker retries storing a result before it hands the message back to the queue "
        "(it never acks a task whose result is not stored).",
    )
    allow_join_in_task: bool = Field(
        False,
        description="Let a running task wait for another task with a blocking `.call()` or `handle.get()`. Off, "
        "that raises `WaitInTaskRefused`: the awaited task may need the very thread, process or prefetch slot the "
        "waiting task holds, and the worker deadlocks until the timeout. Turn it on only where the awaited task "
        "runs on other workers.",
    )

    join_queue: str | None = Field(
        None,
        description="Queue where chord members report their outcome and a worker's joiner counts them "
        "(quorum, single active consumer); default `<exchange>.join`.",
    )
    chord_joiner: bool = Field(
        True,
        description="Each worker child runs a chord joiner on the join queue; one at a time is active, the "
        "next takes over when it dies. Turn off on workers that must not join chords.",
    )
    join_hold_s: float = Field(
        600.0,
        gt=0,
        description="Longest a joiner holds a chord's records unacked before it compacts them into a partial "
        "record; keep it well below the broker's consumer_timeout (30 min by default).",
    )
    chord_callback_dedupe_s: float = Field(
        3600.0,
        gt=0,
        description="A chord's callback is claimed on the broker before it runs, for this many seconds: a copy a "
        "joiner sent again after a crash is acked unrun.",
    )
    join_prefetch: int = Field(
        1000,
        ge=2,
        description="Join records a joiner holds unacked; at this many it compacts them into one partial record "
        "per chord, so a joiner's memory stays bounded whatever the size of a chord.",
    )
    events: bool = Field(
        True,
        description="Workers publish task events and heartbeats, batched and best-effort, to the "
        "`<exchange>.events` topic exchange (`rabbittask status` reads them).",
    )
    events_heartbeat_s: float = Field(2.0, gt=0, description="Seconds between two heartbeats of a worker child.")
    events_received: bool = Field(
        False,
        description="Also send a `received` event when a worker child takes a message (one more append per task, "
        "like Celery's task-received; off by default to keep events cheap).",
    )
    events_started: bool = Field(
        False,
        description="Also send a `started` event when a worker child starts handling a message (one more append "
        "per task, like Celery's task-started; off by default to keep events cheap).",
    )
    history: bool = Field(
        True,
        description="Keep task events on the broker in the `<exchange>.history` stream (bound to the events "
        "exchange), so the dashboard and `rabbittask events` read the past after a restart.",
    )
    history_max_age_s: int = Field(
        86_400, gt=0, description="How long the history stream keeps events, in seconds (24 h by default)."
    )
    history_max_bytes: int = Field(
        1_000_000_000,
        ge=10_000_000,
        description="Most bytes the history stream keeps on disk (1 GB by default); the oldest events go first.",
    )
    eager: bool = Field(
        False,
        description="Run every task the app sends at once, in the sending process, through the worker's own code "
        "(for tests; see docs/testing.md): nothing reaches the broker.",
    )
    otel: bool = Field(
        False,
        description="Create OpenTelemetry spans for publish (producer) and run (consumer), with the trace context "
        "in the `traceparent` header; needs the `otel` extra (`pip install 'rabbittask[otel]'`).",
    )

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # URLs carry passwords (broker, result backend): never print them, not even in a repr.
        for key, value in super().__repr_args__():
            yield key, mask_url(value) if isinstance(value, str) else value

    # Security: TLS files for amqps:// URLs, pre-applied topology, message signing.
    tls_ca_file: str | None = Field(
        None, description="amqps: CA bundle that signs the broker's certificate (default: the system's CAs)."
    )
    tls_cert_file: str | None = Field(None, description="amqps: client certificate (PEM) presented to the broker.")
    tls_key_file: str | None = Field(None, description="amqps: private key (PEM) of the client certificate.")
    declare_topology: bool = Field(
        True,
        description="Declare the app's exchanges and queues on first use; False: an admin applied them "
        "(`rabbittask topology apply`), so clients need no configure permission.",
    )
    signing_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="HMAC-SHA256 message signing keys by key id (JSON in the environment); when set, workers run "
        "only messages signed with one of them.",
    )
    signing_key_id: str | None = Field(None, description="Id of the signing key publishers sign with.")
    control: bool = Field(
        True,
        description="Worker children answer control commands (inspect, ping, revoke, rate limits, pool size) on the "
        "`<exchange>.control` fanout exchange and follow the `<exchange>.revoked` stream.",
    )
    revoke_retention_s: float = Field(
        86400.0,
        gt=0,
        description="How long a revocation is kept on the broker (the `<exchange>.revoked` stream's max age): a task "
        "revoked within it never runs, whichever worker receives it, even one started later.",
    )
    terminate_grace_s: float = Field(
        10.0,
        ge=0,
        description="After `revoke(id, terminate=True)`: how long a sync task may run on (it should call "
        "`ctx.check_revoked()`) before its worker child is replaced and the message dead-lettered.",
    )

    @classmethod
    def read(cls, values: dict[str, Any], owner: str = "rabbittask") -> Settings:
        """Settings from `values` over `RABBITTASK_*` variables; `ConfigError` saying which one is wrong and why."""
        try:
            return cls(**values)
        except ValidationError as e:
            problems = [unknown_names(extra_names(e), cls.model_fields, "setting"), describe(e, ENV_PREFIX)]
            raise ConfigError(f"invalid settings for {owner}: {'; '.join(p for p in problems if p)}") from None

    @field_validator("broker_url")
    @classmethod
    def _check_broker_urls(cls, value: str) -> str:
        for url in value.split(","):
            check_amqp_url(url.strip())
        return value

    @field_validator("celery_result_backend")
    @classmethod
    def _check_celery_results(cls, value: str | None) -> str | None:
        if value is not None and value != "rpc://" and value.split("://")[0] not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"celery_result_backend must be 'rpc://' or a redis:// URL, as the Celery callers' result_backend "
                f"(got {mask_url(value)!r})"
            )
        return value

    @model_validator(mode="after")
    def _check_signing(self) -> Settings:
        if self.signing_key_id is not None and self.signing_key_id not in self.signing_keys:
            known = ", ".join(sorted(self.signing_keys)) or "none"
            raise ValueError(f"signing_key_id {self.signing_key_id!r} is not in signing_keys (known: {known})")
        return self

    @property
    def broker_urls(self) -> list[str]:
        """The broker URL(s), in failover order."""
        return [u.strip() for u in self.broker_url.split(",") if u.strip()]

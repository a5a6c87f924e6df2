"""The exception tree of rabbittask: every error it raises at its users.

    RabbitTaskError
    ├── ConfigError (ValueError)            bad settings, bad task options, bad queue options
    ├── TaskNotFound (LookupError)          a task name the app does not know
    ├── ArgumentsInvalid (TypeError)        a call whose arguments do not fit the task's signature
    ├── PayloadError (ValueError)           a message body that cannot be decoded or encoded
    │   ├── SignatureInvalid                unsigned or tampered message where signatures are required
    │   └── ResultNotSerialisable (TypeError)   a task's return value that cannot be sent as JSON
    ├── BrokerError
    │   ├── ConnectionLost (ConnectionError)    the broker cannot be reached or went away
    │   ├── AccessRefused (PermissionError)     login, virtual host or permission refused (any client)
    │   ├── TopologyMismatch                    a queue exists with other arguments
    │   └── PublishError
    │       ├── PublishConnectionError (ConnectionLost)    no connection to publish on
    │       │   └── PublishAccessRefused (AccessRefused)   ... because the broker refused the publisher
    │       ├── PublishNotConfirmed             nacked, unroutable or unanswered in time
    │       └── BatchNotConfirmed               some messages of a batch were not confirmed
    ├── NodeError (RuntimeError)             a throwaway test node (rabbittask.testing) failed
    ├── ResultBackendError                   the result backend failed or cannot be reached
    ├── WaitInTaskRefused (RuntimeError)     a running task waits for another task (.call(), .get())
    ├── ControlError                         a control command (inspect, revoke, ...) could not be sent or answered
    └── TaskError                            a task failed remotely (results, RPC)

A refusal is an `AccessRefused` wherever it happens. A refused login or virtual host (met by the
connect that publishers, RPC, workers, `status` and the dashboard share) and a publisher's refused
declare or publish are `PublishAccessRefused`, so `except PublishConnectionError` around a publish
still catches them; a worker's refused declare or consume is an `AccessRefused` only.

A remote failure of a builtin type comes back as a `TaskError` that is also an instance of that
builtin: `except ValueError` catches a task's `ValueError` (`TaskError.remote()` makes it).

Control flow, not failure: `Retry` and `Reject` are raised by a task on purpose and are not
logged as errors.
`TaskRevoked` is raised inside a task by `ctx.check_revoked()` once it was revoked with `terminate=True`.
Time limits: `SoftTimeLimitExceeded` is raised inside a task at its `soft_time_limit` (it may catch
it and clean up); `TimeLimitExceeded` names the failure of a task stopped at its hard `time_limit`.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache


class RabbitTaskError(Exception):
    """Raised for every error rabbittask itself reports."""


class ConfigError(RabbitTaskError, ValueError):
    """Raised when settings, task options or queue options are invalid."""


class TaskNotFound(RabbitTaskError, LookupError):
    """Raised when a message names a task the app does not know."""


class ArgumentsInvalid(RabbitTaskError, TypeError):
    """Raised when a call's arguments do not fit the task's signature."""


class PayloadError(RabbitTaskError, ValueError):
    """Raised when a message cannot be decoded, or a value cannot be encoded as JSON."""


class SignatureInvalid(PayloadError):
    """Raised when a message's signature is missing, names an unknown key, or does not match."""


class ResultNotSerialisable(PayloadError, TypeError):
    """Raised when a task's return value cannot be encoded as JSON (the task then fails with it)."""


class BrokerError(RabbitTaskError):
    """Raised when the broker refuses or fails an operation."""


class ConnectionLost(BrokerError, ConnectionError):
    """Raised when the broker cannot be reached, refuses the login, or drops the connection."""


class AccessRefused(BrokerError, PermissionError):
    """Raised when the broker refuses the login, the virtual host, or an operation the user may not do."""


class TopologyMismatch(BrokerError):
    """Raised when a queue or exchange exists on the broker with other arguments than the code declares."""


class PublishError(BrokerError):
    """Raised when a publish did not succeed."""


class PublishConnectionError(PublishError, ConnectionLost):
    """Raised when a publish cannot reach the broker: down, unreachable, or the login was refused."""


class PublishAccessRefused(PublishConnectionError, AccessRefused):
    """Raised when the broker refuses a publisher's login, virtual host, or a declare or publish it may not do."""


class PublishNotConfirmed(PublishError):
    """Raised when the broker nacked, returned (unroutable) or did not confirm a message in time."""


def not_confirmed_advice(message_id: str) -> str:
    """What to do about a publish whose confirm never came: the task may run twice if it is sent again."""
    return (
        "it may or may not have been enqueued. To send it again, give it the same id "
        f"(message_id={message_id!r}); the task may then run twice, as nothing removes the repeat, but a task "
        "can recognise it by its id (TaskContext.id) and skip it"
    )


class BatchNotConfirmed(PublishError):
    """Raised when a batch ends with messages the broker did not confirm."""

    def __init__(self, message: str, failed_ids: Sequence[str]) -> None:
        super().__init__(message)
        self.failed_ids = list(failed_ids)


class NodeError(RabbitTaskError, RuntimeError):
    """Raised when a test node (`rabbittask.testing`) fails to start or stop, or a CLI command against it fails."""


class ResultBackendError(RabbitTaskError):
    """Raised when the result backend cannot be reached or fails a store, fetch or delete."""


class WaitInTaskRefused(RabbitTaskError, RuntimeError):
    """Raised when a running task waits synchronously for another task (`.call()`, `.get()`), which can deadlock."""


class ControlError(RabbitTaskError):
    """Raised when a control command (inspect, ping, revoke, rate limit, pool size) cannot be sent or is refused."""


class TaskError(RabbitTaskError):
    """Raised in the caller when a task failed in the worker; carries the remote type and traceback.

    `TaskError.remote(type_name, ...)` is what results and replies raise: for a builtin exception type
    (`ValueError`, `KeyError`, `TimeoutError`, ...) an instance of a subclass that also derives from
    that builtin, so `except ValueError` works as if the task ran here.

    `reason` is the text of the `rt-reason` header its dead letter carries ("task raised", "max retries
    exceeded", "expired", "invalid arguments", ...).
    """

    def __init__(self, type_name: str, message: str, traceback: str = "", reason: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.remote_message = message
        self.remote_traceback = traceback
        self.reason = reason

    def __str__(self) -> str:
        # Not the builtin's own: KeyError quotes its argument, OSError formats errno and strerror.
        return str(self.args[0]) if self.args else ""

    @classmethod
    def remote(cls, type_name: str, message: str, traceback: str = "", reason: str = "") -> TaskError:
        """The error of a remote failure of type `type_name`: also an instance of it if it is a builtin."""
        return _remote_class(type_name)(type_name, message, traceback, reason)


@lru_cache(maxsize=256)  # keyed by names that come from workers: bounded
def _remote_class(type_name: str) -> type[TaskError]:
    """`TaskError`, or a subclass of it and of the builtin exception `type_name` (made once per name)."""
    builtin = getattr(builtins, type_name, None)
    if not (isinstance(builtin, type) and issubclass(builtin, Exception)):
        return TaskError  # a user's own exception type: its class is not importable here
    for base in builtin.__mro__:  # UnicodeDecodeError needs 5 arguments: fall back to UnicodeError, ...
        if base is Exception:
            break
        try:
            made = type(f"TaskError[{base.__name__}]", (TaskError, base), {"__module__": __name__})
            made("probe", "probe")  # the builtin's constructor must take one message
        except (TypeError, ValueError):  # a layout conflict, or a constructor of other arguments
            continue
        return made
    return TaskError


class Reject(Exception):  # noqa: N818 - control flow, named for what the task asks for
    """Raised by a task to dead-letter its message on purpose, with a reason."""

    def __init__(self, reason: str = "rejected by task") -> None:
        super().__init__(reason)
        self.reason = reason


class Retry(Exception):  # noqa: N818 - control flow, named for what the task asks for
    """Raised by a task to run it again later: `raise Retry(countdown=30)` or `raise ctx.retry(exc=e)`.

    `countdown` (seconds) or `eta` (a datetime) say when; without either the task's retry policy
    chooses the delay. `exc` is the failure being retried: it is what the dead-letter queue shows
    once the retries are used up. `max_retries` overrides the task's limit for this decision.
    """

    def __init__(
        self,
        countdown: float | None = None,
        *,
        eta: datetime | None = None,
        exc: BaseException | None = None,
        max_retries: int | None = None,
    ) -> None:
        when = f"in {countdown:g} s" if countdown is not None else f"at {eta.isoformat()}" if eta else "later"
        super().__init__(f"retry {when}" + (f" after {type(exc).__name__}: {exc}" if exc is not None else ""))
        self.countdown = countdown
        self.eta = eta
        self.exc = exc
        self.max_retries = max_retries


class SoftTimeLimitExceeded(Exception):  # noqa: N818 - named like the limit it reports
    """Raised inside a running task when it passes its `soft_time_limit`; catch it to clean up."""


class TimeLimitExceeded(Exception):  # noqa: N818 - named like the limit it reports
    """Raised (async tasks) or reported (sync tasks) when a task passes its hard `time_limit`."""


class TaskRevoked(Exception):  # noqa: N818 - control flow, named for what happened to the task
    """Raised inside a running task by `ctx.check_revoked()` once the task was revoked with `terminate=True`."""

"""rabbittask: a RabbitMQ-first task framework.

Nothing confirmed is lost: `.delay()` returns after a publisher confirm, workers ack after the
task finished, and failures end in a dead-letter queue with the reason.
"""

from __future__ import annotations

from rabbittask.app import App
from rabbittask.context import TaskContext
from rabbittask.errors import (
    AccessRefused,
    ArgumentsInvalid,
    BatchNotConfirmed,
    BrokerError,
    ConfigError,
    ConnectionLost,
    ControlError,
    PayloadError,
    PublishAccessRefused,
    PublishConnectionError,
    PublishError,
    PublishNotConfirmed,
    RabbitTaskError,
    Reject,
    ResultBackendError,
    ResultNotSerialisable,
    Retry,
    SignatureInvalid,
    SoftTimeLimitExceeded,
    TaskError,
    TaskNotFound,
    TaskRevoked,
    TimeLimitExceeded,
    TopologyMismatch,
    WaitInTaskRefused,
)
from rabbittask.logs import get_task_logger
from rabbittask.progress import Progress
from rabbittask.results.backend import ResultBackend
from rabbittask.results.record import Status
from rabbittask.settings import Settings
from rabbittask.task import Signature, Task, TaskHandle
from rabbittask.version import __version__
from rabbittask.workflow.canvas import chain, chord, group
from rabbittask.workflow.handles import WorkflowHandle
from rabbittask.workflow.signature import Chain

__all__ = [
    # the app and its tasks
    "App",
    "Settings",
    "Task",
    "TaskHandle",
    "TaskContext",
    "Progress",
    "Signature",
    "get_task_logger",
    # workflows
    "chain",
    "group",
    "chord",
    "Chain",
    "WorkflowHandle",
    # results, and the interface of result-backend plugins
    "Status",
    "ResultBackend",
    # control flow raised by tasks, or into them
    "Reject",
    "Retry",
    "SoftTimeLimitExceeded",
    "TimeLimitExceeded",
    "TaskRevoked",
    # errors
    "RabbitTaskError",
    "ConfigError",
    "TaskNotFound",
    "ArgumentsInvalid",
    "PayloadError",
    "SignatureInvalid",
    "ResultNotSerialisable",
    "BrokerError",
    "ConnectionLost",
    "AccessRefused",
    "TopologyMismatch",
    "PublishError",
    "PublishConnectionError",
    "PublishAccessRefused",
    "PublishNotConfirmed",
    "BatchNotConfirmed",
    "ResultBackendError",
    "WaitInTaskRefused",
    "ControlError",
    "TaskError",
    "__version__",
]

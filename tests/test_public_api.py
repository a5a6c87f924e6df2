"""The public surface is deliberate: `rabbittask.__all__` is asserted name by name, and every exception
a user can meet is in the tree under `RabbitTaskError` or is control flow on purpose."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import rabbittask
import rabbittask.errors
from rabbittask import RabbitTaskError

EXPECTED = [
    "__version__",
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
    # control flow
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
]

# The test kit's surface (docs/testing.md): `from rabbittask.testing import ...`.
TESTING = [
    "StubBroker",
    "Eager",
    "Message",
    "MemoryBackend",
    "WorkerProcess",
    "WorkerFactory",
    "RabbitNode",
    "TlsFiles",
    "NodeError",
    "broker_answers",
    "free_port",
    "rabbitmq_bin_dir",
]

# Exceptions raised on purpose to steer a task or the worker, not to report a failure.
CONTROL_FLOW = {
    "Reject",  # a task dead-letters its message
    "Retry",  # a task asks to run again later
    "SoftTimeLimitExceeded",  # raised into a task at its soft limit, for it to clean up
    "TimeLimitExceeded",  # names the failure of a task stopped at its hard limit
    "TaskRevoked",  # raised into a task by ctx.check_revoked() after revoke(terminate=True)
    "Halt",  # the worker's supervisor stops with an exit status (worker/supervisor.py)
}
# Exceptions of the tree that are public elsewhere than in `rabbittask.__all__`.
EXPORTED_ELSEWHERE = {"NodeError": "rabbittask.testing"}
# `python -m rabbittask` runs the CLI when imported.
NOT_IMPORTED = {"rabbittask.__main__"}


def modules() -> list[ModuleType]:
    """Every module of the package, except those whose optional dependency (an extra) is not installed."""
    found = [rabbittask]
    for info in pkgutil.walk_packages(rabbittask.__path__, "rabbittask.", onerror=lambda name: None):
        if info.name in NOT_IMPORTED:
            continue
        try:
            found.append(importlib.import_module(info.name))
        except ModuleNotFoundError as e:
            if (e.name or "").split(".")[0] == "rabbittask":
                raise
    return found


def user_visible(name: str) -> bool:
    return not any(part.startswith("_") for part in name.split("."))


def exceptions_defined_in(module: ModuleType) -> list[type[BaseException]]:
    return [
        obj
        for name, obj in vars(module).items()
        if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__
    ]


def test_all_is_exactly_the_expected_names() -> None:
    assert len(rabbittask.__all__) == len(set(rabbittask.__all__)), "a name is listed twice"
    assert sorted(rabbittask.__all__) == sorted(EXPECTED)


def test_the_testing_kit_exports_exactly_the_expected_names() -> None:
    import rabbittask.testing

    assert sorted(rabbittask.testing.__all__) == sorted(TESTING)
    assert all(getattr(rabbittask.testing, name).__doc__ for name in TESTING)


def test_every_public_name_is_importable_and_documented() -> None:
    for name in rabbittask.__all__:
        obj = getattr(rabbittask, name)
        if name == "__version__":
            assert isinstance(obj, str) and obj
            continue
        assert (obj.__doc__ or "").strip(), f"rabbittask.{name} has no docstring"


def test_every_exception_a_user_can_see_is_a_rabbittask_error_or_control_flow() -> None:
    seen = []
    for module in modules():
        if not user_visible(module.__name__):
            continue
        for exc in exceptions_defined_in(module):
            if not user_visible(exc.__name__):
                continue
            seen.append(exc)
            assert issubclass(exc, RabbitTaskError) or exc.__name__ in CONTROL_FLOW, (
                f"{exc.__module__}.{exc.__qualname__} is raised at users outside the exception tree: "
                "derive it from a class of rabbittask.errors (or move it there)"
            )
    assert len(seen) > 20  # the walk found the tree, not an empty package


def test_the_exception_tree_is_exported_and_drawn_in_the_errors_docstring() -> None:
    doc = rabbittask.errors.__doc__ or ""
    for exc in exceptions_defined_in(rabbittask.errors):
        name = exc.__name__
        home = importlib.import_module(EXPORTED_ELSEWHERE.get(name, "rabbittask"))
        assert name in home.__all__, f"{name} is not exported from {home.__name__}"
        assert getattr(home, name) is exc
        assert exc.__doc__ and exc.__doc__.startswith("Raised "), f"{name}: one line 'Raised when ...'"
        if exc.__name__ not in CONTROL_FLOW:
            assert f" {name} " in doc or f" {name}\n" in doc, f"{name} is missing from the tree in errors.py"

"""The pytest plugin of rabbittask (entry point `pytest11`: loaded wherever rabbittask is installed).

Fixtures (docs/testing.md shows each in use):

* `rabbittask_app`: your app. Override it in a conftest.py, or name it in the ini file:
  `rabbittask_app = "shop.tasks:app"`.
* `rabbittask_eager`: the app in eager mode for one test (an `Eager`).
* `rabbittask_stub`: a `StubBroker` for the app, entered for one test.
* `rabbittask_broker_url` (session): a real broker, first that applies: `RABBITTASK_TEST_BROKER_URL`,
  a testcontainers RabbitMQ where Docker answers, a throwaway `rabbitmq-server` node. A `str`
  with `.source` and `.description`; the run's summary says which broker it was.
* `rabbittask_live_app`: `rabbittask_app` connected to that broker for one test.
* `rabbittask_worker`: a factory of real `rabbittask worker` subprocesses on that broker, each
  stopped at teardown (its log is attached to the report of a failed test).

Disable it with `-p no:rabbittask`. It registers nothing else and changes no other test.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from rabbittask.app import App
    from rabbittask.testing.brokers import BrokerUrl
    from rabbittask.testing.eager import Eager
    from rabbittask.testing.stub import StubBroker
    from rabbittask.testing.workers import WorkerFactory, WorkerProcess

REPORT_KEY = "rabbittask broker"
_chosen = pytest.StashKey[str]()  # the session's broker, in words (in each xdist worker)
_reported = pytest.StashKey[set[str]]()
_failed = pytest.StashKey[bool]()
_BROKERS_USED: list[str] = []  # in the process that prints the summary (xdist's controller)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("rabbittask_app", "import path of the app the rabbittask fixtures use, e.g. shop.tasks:app")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_reported] = set()


# -- your app, in memory ----------------------------------------------------------------------------


@pytest.fixture
def rabbittask_app(request: pytest.FixtureRequest) -> App:
    """The app under test: override this fixture, or set `rabbittask_app = "pkg.module:app"` in the ini file."""
    path = request.config.getini("rabbittask_app")
    if not path:
        raise pytest.UsageError(
            "the rabbittask fixtures need your app: define a fixture `rabbittask_app` that returns it (conftest.py), "
            'or set rabbittask_app = "pkg.module:app" in your pytest configuration'
        )
    module, _, attr = str(path).partition(":")
    return getattr(importlib.import_module(module), attr or "app")  # type: ignore[no-any-return]


@pytest.fixture
def rabbittask_eager(rabbittask_app: App) -> Iterator[Eager]:
    """`rabbittask_app` in eager mode for this test: each task runs as it is sent."""
    with rabbittask_app.eager() as eager:
        yield eager


@pytest.fixture
def rabbittask_stub(rabbittask_app: App) -> Iterator[StubBroker]:
    """A `StubBroker` that takes every send of `rabbittask_app` during this test."""
    from rabbittask.testing.stub import StubBroker

    with StubBroker(rabbittask_app) as stub:
        yield stub


# -- a real broker and real workers -----------------------------------------------------------------


@pytest.fixture(scope="session")
def rabbittask_broker_url(request: pytest.FixtureRequest) -> Iterator[BrokerUrl]:
    """A real broker for the session (see the module doc); skips the tests that need one if there is none."""
    from rabbittask.errors import NodeError
    from rabbittask.testing.brokers import ENV_URL, session_broker

    with contextlib.ExitStack() as stack:
        try:
            url = session_broker(stack)
        except NodeError as e:
            if ENV_URL in str(e) and "does not answer" in str(e):
                pytest.fail(str(e))
            pytest.skip(str(e))
        request.config.stash[_chosen] = url.description
        yield url


@pytest.fixture
def rabbittask_live_app(rabbittask_app: App, rabbittask_broker_url: BrokerUrl) -> Iterator[App]:
    """`rabbittask_app` sending to `rabbittask_broker_url` during this test (its connections closed after)."""
    from rabbittask.testing.brokers import connected

    with connected(rabbittask_app, rabbittask_broker_url) as app:
        yield app


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Note which broker a test used on its first report (reports reach xdist's controller), and failures."""
    report = yield
    if report.failed:
        item.stash[_failed] = True  # the worker fixture attaches its workers' logs
    chosen = item.config.stash.get(_chosen, None)
    reported = item.config.stash.get(_reported, set())
    if chosen is not None and chosen not in reported and "rabbittask_broker_url" in getattr(item, "fixturenames", ()):
        reported.add(chosen)
        report.user_properties.append((REPORT_KEY, chosen))
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for name, value in report.user_properties:
        if name == REPORT_KEY and value not in _BROKERS_USED:
            _BROKERS_USED.append(str(value))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in _BROKERS_USED:
        terminalreporter.write_line(f"rabbittask: tests used {line}")


@pytest.fixture
def rabbittask_worker(
    rabbittask_broker_url: BrokerUrl, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[WorkerFactory]:
    """Start real workers: `rabbittask_worker("shop.tasks:app", queues=["emails"])` returns a `WorkerProcess`.

    Keywords: `queues` (default: all of the app's), `concurrency` (`-c`), `args` (more worker flags),
    `env` (more environment), `broker_url` (default: `rabbittask_broker_url`), `ready` (wait until every
    child consumes; default True). The app may be an `App` that is a module attribute. Every worker is
    stopped at teardown.
    """
    from rabbittask.testing.workers import WorkerProcess, app_path, import_root, worker_env

    started: list[WorkerProcess] = []
    root = request.config.rootpath

    def start(
        app: App | str,
        *,
        queues: Sequence[str] = (),
        concurrency: int = 1,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        broker_url: str | None = None,
        ready: bool = True,
        timeout_s: float = 30.0,
    ) -> WorkerProcess:
        path = app_path(app)
        argv = ["-A", path, "-c", str(concurrency), *(["-Q", ",".join(queues)] if queues else []), *args]
        where = [p for p in (import_root(path), root, Path.cwd()) if p is not None]
        environ = worker_env(broker_url or rabbittask_broker_url, env, path=where)
        worker = WorkerProcess(argv, environ, tmp_path / f"rabbittask-worker-{len(started)}.log", cwd=root)
        started.append(worker)
        if ready:
            worker.wait_ready(concurrency, timeout_s)
        return worker

    yield start
    failed = request.node.stash.get(_failed, False)
    for worker in started:
        worker.stop()
        if failed:
            request.node.add_report_section("teardown", f"rabbittask worker {worker.pid}", worker.log()[-5000:])

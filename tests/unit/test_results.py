"""Results without a broker: result records, the backend registry, the base class defaults, handle errors."""

from __future__ import annotations

import asyncio
import importlib.metadata
import threading
from importlib.metadata import EntryPoint

import pytest

from rabbittask import App, ConfigError, ResultNotSerialisable, Settings, TaskError, TaskHandle
from rabbittask.results.backend import ENTRY_POINT_GROUP, ResultBackend, load_backend
from rabbittask.results.backends.redis import RedisBackend
from rabbittask.results.record import decode_result, encode_failure, encode_success, status_of


class MemoryBackend(ResultBackend):
    """The smallest plugin: three methods; `wait` and the async twins come from the base class."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.records: dict[str, bytes] = {}

    def store(self, task_id: str, record: bytes, expires_s: float) -> None:
        self.records[task_id] = record

    def fetch(self, task_id: str) -> bytes | None:
        return self.records.get(task_id)

    def forget(self, task_id: str) -> None:
        self.records.pop(task_id, None)


class NotABackend:
    def __init__(self, url: str) -> None: ...


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Replace the installed entry points with `{scheme: "module:attr"}` entries the test sets."""
    found: dict[str, str] = {}

    def fake(group: str) -> list[EntryPoint]:
        assert group == ENTRY_POINT_GROUP
        return [EntryPoint(name, value, group) for name, value in found.items()]

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)  # imported when a backend is looked up
    return found


def test_a_success_record_round_trips_its_value() -> None:
    data = encode_success("t.add", {"sum": 3, "parts": [1, 2]})
    assert decode_result(data) == {"sum": 3, "parts": [1, 2]}
    assert status_of(data) == "SUCCESS"


def test_a_failure_record_is_raised_as_task_error_with_remote_details() -> None:
    data = encode_failure("t.add", "ValueError", "bad input", "Traceback ...\nValueError: bad input", "task raised")
    assert status_of(data) == "FAILURE"
    with pytest.raises(TaskError) as info:
        decode_result(data)
    assert (info.value.type_name, info.value.remote_message) == ("ValueError", "bad input")
    assert info.value.remote_traceback.startswith("Traceback")


def test_a_value_json_cannot_carry_is_refused_naming_its_type() -> None:
    class Connection:
        pass

    with pytest.raises(ResultNotSerialisable, match="result of type Connection is not JSON-serialisable"):
        encode_success("t.connect", Connection())


def test_the_redis_schemes_load_the_redis_backend_without_connecting() -> None:
    for url in ("redis://127.0.0.1:1/0", "rediss://user:secret@example.invalid:6380/1", "unix:///tmp/none.sock"):
        backend = load_backend(url)
        assert isinstance(backend, RedisBackend)
        assert "secret" not in repr(backend)


def test_an_unknown_scheme_names_the_installed_backends() -> None:
    with pytest.raises(ConfigError, match=r"no result backend for URL scheme 'mongodb'.*installed backends: redis"):
        load_backend("mongodb://user:pw@db/results")


def test_a_plugin_is_found_by_its_entry_point(plugins: dict[str, str]) -> None:
    plugins["mem"] = f"{__name__}:MemoryBackend"
    backend = load_backend("mem://anything")
    assert isinstance(backend, MemoryBackend) and backend.url == "mem://anything"


def test_a_plugin_that_is_not_a_backend_or_cannot_be_imported_is_a_config_error(plugins: dict[str, str]) -> None:
    plugins["odd"] = f"{__name__}:NotABackend"
    plugins["gone"] = "rabbittask_no_such_module:Backend"
    with pytest.raises(ConfigError, match="is not a subclass of ResultBackend"):
        load_backend("odd://x")
    with pytest.raises(ConfigError, match="'gone' .* cannot be imported"):
        load_backend("gone://x")


def test_the_base_class_gives_a_plugin_wait_and_async_twins() -> None:
    backend = MemoryBackend("mem://")
    assert backend.wait("t1", timeout_s=0.05) is None
    threading.Timer(0.05, backend.store, args=("t1", b"rec", 60)).start()
    assert backend.wait("t1", timeout_s=5) == b"rec"

    async def main() -> None:
        assert await backend.await_("t2", timeout_s=0.05) is None
        await backend.astore("t2", b"rec2", 60)
        assert await backend.afetch("t2") == b"rec2"
        assert await backend.await_("t2", timeout_s=1) == b"rec2"
        await backend.aforget("t2")
        assert await backend.afetch("t2") is None

    asyncio.run(main())


def test_results_of_an_app_without_a_backend_are_a_clear_error() -> None:
    app = App("nobackend", broker_url="amqp://guest:guest@127.0.0.1:1/")

    @app.task(name="nb.add")
    def add(x: int, y: int) -> int:
        return x + y

    handle = TaskHandle("some-id", "nb.add", "default", app)
    for read in (lambda: handle.get(timeout=1), lambda: handle.status, handle.forget):
        with pytest.raises(ConfigError, match="app 'nobackend' has no result backend.*result_backend='redis://"):
            read()
    with pytest.raises(ConfigError, match="has no result backend"):
        asyncio.run(handle.aget(timeout=1))


def test_a_task_can_opt_out_of_results(plugins: dict[str, str]) -> None:
    plugins["mem"] = f"{__name__}:MemoryBackend"
    app = App("optout", broker_url="amqp://guest:guest@127.0.0.1:1/", result_backend="mem://")

    @app.task(name="o.quiet", ignore_result=True)
    def quiet() -> None: ...

    @app.task(name="o.loud")
    def loud() -> int:
        return 1

    assert quiet.ignore_result and not loud.ignore_result
    with pytest.raises(ConfigError, match="'o.quiet' is declared with ignore_result=True"):
        _ = quiet.handle("id-1").status
    assert loud.handle("id-2").status == "PENDING"
    assert isinstance(app.backend, MemoryBackend)
    app.backend.store("id-2", encode_success("o.loud", 1), 60)
    assert loud.handle("id-2").get(timeout=1) == 1 and loud.handle("id-2").status == "SUCCESS"


def test_results_expire_after_a_day_unless_configured() -> None:
    assert Settings().result_expires_s == 86400
    assert Settings(result_expires_s=60).result_expires_s == 60
    with pytest.raises(ValueError):
        Settings(result_expires_s=0)

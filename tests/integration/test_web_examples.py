"""The FastAPI and Flask examples served by real servers (uvicorn; Werkzeug's threaded server), called
concurrently with httpx, with a real worker: every request answered, every task run, and the broker
connections shared (ASGI: per event loop) or per thread and closed when the thread ends (WSGI).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from rabbittask.testing.workers import WorkerProcess, worker_env
from tests.servers import free_port
from tests.vhosts import own_vhost
from tests.waiting import wait_until
from tests.workers import ROOT


@pytest.fixture
def web_env(broker_url: str) -> Iterator[dict[str, str]]:
    """A vhost of its own: the examples' queue is called `web`."""
    with own_vhost(broker_url, "rt-web") as url:
        yield worker_env(url or broker_url, path=[ROOT])


@pytest.fixture
def worker(web_env: dict[str, str], tmp_path: Path) -> Iterator[WorkerProcess]:
    w = WorkerProcess(["-A", "examples.webtasks:app", "-c", "2"], web_env, tmp_path / "worker.log", cwd=ROOT)
    try:
        w.wait_for_log("consuming from web", 60, count=2)
        yield w
    finally:
        w.stop()


class Server:
    """A web server subprocess on a free port, its output in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, *[a.replace("{port}", str(self.port)) for a in args]]
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        up = (httpx.HTTPError,)
        wait_until(lambda: httpx.get(f"{self.base}/nothing", timeout=2), 30, f"the server {args}", ignoring=up)

    def broker_connections(self, broker_port: int) -> int:
        """TCP connections from the server's process to the broker."""
        conns = psutil.Process(self.proc.pid).net_connections(kind="tcp")
        return sum(1 for c in conns if c.raddr and c.raddr.port == broker_port and c.status == "ESTABLISHED")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(30)
        self._log.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def broker_port(env: dict[str, str]) -> int:
    return urlsplit(env["RABBITTASK_BROKER_URL"]).port or 5672


@pytest.mark.timeout(240)
def test_fastapi_serves_100_concurrent_requests_on_shared_connections_closed_by_the_lifespan(
    web_env: dict[str, str], worker: WorkerProcess, tmp_path: Path
) -> None:
    server = Server(["-m", "uvicorn", "examples.fastapi_app:api", "--port", "{port}"], web_env, tmp_path / "web.log")
    try:

        async def hundred() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.base, timeout=60) as client:
                sends = [client.post("/add", params={"x": i, "y": 1}) for i in range(50)]
                calls = [client.get("/add", params={"x": i, "y": 1000}) for i in range(50)]
                return await asyncio.gather(*sends, *calls)

        # When 100 requests come at once: 50 send a task, 50 run one and wait for its result
        responses = asyncio.run(hundred())
        # Then each is answered: the sends with a task id, the calls with their task's result
        assert [r.status_code for r in responses] == [200] * 100, [r.text for r in responses if r.status_code != 200]
        assert len({r.json()["task_id"] for r in responses[:50]}) == 50
        assert [r.json()["result"] for r in responses[50:]] == [i + 1000 for i in range(50)]
        worker.wait_for_log("task examples.webtasks.add", 60, count=100)
        # And they shared the event loop's connections: one publisher, one RPC client
        assert server.broker_connections(broker_port(web_env)) == 2
        assert httpx.get(f"{server.base}/shout", params={"text": "hi"}, timeout=30).json() == {"result": "HI!"}
    finally:
        code = server.stop()
    # The lifespan closed them when the server stopped
    log = server.log()
    assert code == 0, log
    assert "rabbittask connections closed" in log and "Application shutdown complete" in log
    assert "Traceback" not in log


@pytest.mark.timeout(240)
def test_flask_threads_send_50_concurrent_requests_and_close_each_threads_connection(
    web_env: dict[str, str], worker: WorkerProcess, tmp_path: Path
) -> None:
    server = Server(["-m", "examples.flask_app", "{port}"], web_env, tmp_path / "web.log")
    port = broker_port(web_env)
    try:
        # When 50 requests come at once, each served by a thread of its own that calls .delay()
        with httpx.Client(base_url=server.base, timeout=60) as client, ThreadPoolExecutor(50) as pool:
            responses = list(pool.map(lambda i: client.post("/add", params={"x": i, "y": 2}), range(50)))
        # Then each is answered with its task id, and the worker runs every task
        assert [r.status_code for r in responses] == [200] * 50, [r.text for r in responses if r.status_code != 200]
        assert len({r.json()["task_id"] for r in responses}) == 50
        worker.wait_for_log("task examples.webtasks.add", 60, count=50)
        # And each thread's connection was closed when its thread ended
        wait_until(lambda: server.broker_connections(port) == 0, 30, "the request threads' connections closed")
        # .call() from request threads shares the process's RPC connection
        with ThreadPoolExecutor(5) as pool:
            results = list(
                pool.map(lambda i: httpx.get(f"{server.base}/add", params={"x": i, "y": 2}, timeout=60), range(5))
            )
        assert [r.json()["result"] for r in results] == [i + 2 for i in range(5)]
        assert server.broker_connections(port) == 1
    finally:
        server.stop()
    assert "Traceback" not in server.log()

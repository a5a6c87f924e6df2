"""Redis for the result-backend tests: the one that answers, or a throwaway `redis-server` on a free port.

`redis_url` (session) takes, in order: `RABBITTASK_TEST_REDIS_URL`; a Redis answering on 127.0.0.1:6379; a
throwaway server started from the local `redis-server` binary (no persistence, its own directory).
`redis_server` is always a throwaway one, for tests that stop and start it. Results are keyed by
task ids (UUIDs), so tests sharing a Redis never see each other's keys. A test module imports the
fixture functions (`redis_url_fixture`, `redis_server_fixture`) to use the fixtures.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest
import redis

from rabbittask.settings import mask_url
from rabbittask.testing import free_port
from tests.waiting import wait_until

LOCAL_URL = "redis://127.0.0.1:6379/0"


def redis_answers(url: str, timeout_s: float = 1.0) -> bool:
    """True when a Redis at `url` answers PING within `timeout_s`; never raises."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


class RedisServer:
    """A `redis-server` process on a free loopback port, without persistence; `stop()`/`start()` at will."""

    def __init__(self, port: int | None = None) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(binary):
            pytest.fail("no Redis answers and redis-server is not installed: apt-get install redis-server")
        self.binary = binary
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tempfile.mkdtemp(prefix="rabbittask-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with open(os.path.join(self.dir, "redis.log"), "ab") as log:
            self.proc = subprocess.Popen([self.binary, *args, "--dir", self.dir], stdout=log, stderr=log)
        proc = self.proc

        def answers() -> bool:
            if redis_answers(self.url, timeout_s=0.2):
                return True
            if proc.poll() is not None:
                raise AssertionError(f"redis-server exited with status {proc.returncode}")
            return False

        try:
            wait_until(answers, timeout_s, "redis-server answers")
        except AssertionError as e:
            self.stop()
            pytest.fail(f"redis-server on port {self.port} did not start ({e}); see {self.dir}/redis.log")
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# Registered under `name=`: a module that imports the functions does not shadow its own parameters.
@pytest.fixture(scope="session", name="redis_url")
def redis_url_fixture() -> Iterator[str]:
    """URL of the Redis the result-backend tests share."""
    url = os.environ.get("RABBITTASK_TEST_REDIS_URL")
    if url:
        if not redis_answers(url, timeout_s=5):
            pytest.fail(f"RABBITTASK_TEST_REDIS_URL={mask_url(url)} does not answer; start it or unset the variable")
        yield url
        return
    if redis_answers(LOCAL_URL):
        yield LOCAL_URL
        return
    server = RedisServer()
    try:
        yield server.start().url
    finally:
        server.cleanup()


@pytest.fixture(name="redis_server")
def redis_server_fixture() -> Iterator[RedisServer]:
    """A throwaway Redis for this test alone, not started: call `.start()` (and `.stop()`) when the test wants."""
    server = RedisServer()
    try:
        yield server
    finally:
        server.cleanup()

"""Real worker processes for tests: `rabbittask worker` as a subprocess, in a process group of its own.

`WorkerProcess` starts one, captures its log to a file, waits for what it logs, and stops it:
SIGTERM (a warm shutdown), then SIGKILL of the whole group if it is still there. The pytest
plugin's `rabbittask_worker` fixture makes them and stops each at teardown.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rabbittask.app import App

READY = "consuming from"  # what a worker child logs once its consumers are attached (worker/session.py)


class WorkerProcess:
    """A `rabbittask worker <args>` subprocess; its output goes to `log_path`.

    `wrap` runs it under another command (e.g. `ip netns exec NS`); `cwd` is where it starts.
    """

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        wrap: Sequence[str] = (),
        cwd: Path | str | None = None,
    ) -> None:
        self.args = list(args)
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*wrap, sys.executable, "-m", "rabbittask", "worker", *args],
            env=dict(env),
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: killpg reaches its children too
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} pid={self.pid} {' '.join(getattr(self, 'args', []))}>"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        """Everything the worker printed so far."""
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout_s: float = 20.0, count: int = 1) -> None:
        """Wait until `text` appears `count` times in the log; `AssertionError` with the log's tail if not.

        Fails at once if the worker exited.
        """
        deadline = time.monotonic() + timeout_s
        pause_s = 0.01
        while self.log().count(text) < count:
            exited = self.proc.poll()
            if exited is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"worker log never showed {text!r} x{count} (exit={exited}, {timeout_s:g} s)\n{self.log()[-3000:]}"
                )
            time.sleep(pause_s)
            pause_s = min(pause_s * 2, 0.1)

    def wait_ready(self, children: int = 1, timeout_s: float = 30.0) -> None:
        """Wait until `children` children consume (each logs "consuming from" once attached)."""
        self.wait_for_log(READY, timeout_s, count=children)

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group (the supervisor and its children)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, wait for the exit, SIGKILL the group if it does not come; return the exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        try:  # children that outlived their supervisor (they die with it, but never leave one behind)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()
        return self.proc.returncode


class WorkerFactory(Protocol):
    """The `rabbittask_worker` fixture: start a worker on `app` (an `App`, or `"pkg.module:app"`), return it."""

    def __call__(
        self,
        app: App | str,
        *,
        queues: Sequence[str] = (),
        concurrency: int = 1,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        broker_url: str | None = None,
        ready: bool = True,
        timeout_s: float = 30.0,
    ) -> WorkerProcess: ...


def app_path(app: App | str) -> str:
    """`module:attribute` of an app for `-A`: given as is, or found among the loaded modules."""
    if isinstance(app, str):
        return app
    for name, module in list(sys.modules.items()):
        if module is None or name == "__main__":
            continue
        for attr, value in list(vars(module).items()):
            if value is app:
                return f"{name}:{attr}"
    raise LookupError(f"app {app.name!r} is not a module attribute: pass its import path, e.g. 'shop.tasks:app'")


def import_root(app: str) -> Path | None:
    """The directory a subprocess needs on its path to import `module:attribute` as this process does, or None."""
    top = app.partition(":")[0].split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        return None
    origin = Path(spec.origin)
    return origin.parent.parent if spec.submodule_search_locations else origin.parent


def worker_env(
    broker_url: str, extra: Mapping[str, str] | None = None, path: Sequence[Path | str] = ()
) -> dict[str, str]:
    """The environment of a worker subprocess: this one, the broker URL, `path` before PYTHONPATH, and `extra`."""
    env = dict(os.environ)
    env["RABBITTASK_BROKER_URL"] = broker_url
    env["PYTHONPATH"] = os.pathsep.join([*map(str, path), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra or {})
    return env

"""Worker subprocesses for the drain and RPC cases: start, wait for completions, stop, and sample memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.counter import ENV, Totals, read_totals

REPO = Path(__file__).resolve().parent.parent


class ChildFailed(RuntimeError):
    """Raised when a worker subprocess exits before the bench asked it to."""


def spawn(cmd: list[str], workdir: str, name: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `cmd` with the repo importable, the counter directory set, and output in `<workdir>/<name>.log`."""
    env = {**os.environ, ENV: workdir, "PYTHONPATH": str(REPO), **(extra_env or {})}
    with open(log_path(workdir, name), "wb") as log:
        return subprocess.Popen(cmd, env=env, cwd=REPO, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)


def log_path(workdir: str, name: str) -> Path:
    return Path(workdir) / f"{name}.log"


def log_tail(workdir: str, name: str, lines: int = 12) -> str:
    path = log_path(workdir, name)
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def wait_count(workdir: str, n: int, procs: list[subprocess.Popen[bytes]], timeout_s: float) -> Totals:
    """Poll the counters until `n` tasks completed; fail fast if a worker died."""
    deadline = time.monotonic() + timeout_s
    while (totals := read_totals(workdir)).count < n:
        for proc in procs:
            if proc.poll() is not None:
                raise ChildFailed(f"worker exited with {proc.returncode} after {totals.count} of {n} tasks")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{totals.count} of {n} tasks completed after {timeout_s:.0f} s")
        time.sleep(0.01)
    time.sleep(0.05)  # let the last writes land, then read once more
    return read_totals(workdir)


def stop(procs: list[subprocess.Popen[bytes]], timeout_s: float = 30.0) -> None:
    """SIGTERM (warm shutdown), then SIGKILL after `timeout_s`; only the processes this bench started."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class MemoryPeak:
    """Peak memory in MB seen while sampling: the started processes, their descendants, all together."""

    root_rss: float = 0.0
    root_pss: float = 0.0
    child_rss: float = 0.0
    child_pss: float = 0.0
    total_rss: float = 0.0
    total_pss: float = 0.0
    samples: int = 0


class MemorySampler(threading.Thread):
    """Samples RSS and PSS (psutil `memory_full_info`) of `pids` and their children every `interval_s`."""

    def __init__(self, pids: list[int], interval_s: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.interval_s = interval_s
        self.peak = MemoryPeak()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval_s)

    def sample(self) -> None:
        total_rss = total_pss = 0.0
        peak = self.peak
        for pid in self.pids:
            try:
                root = psutil.Process(pid)
                rss, pss = _mb(root)
                peak.root_rss, peak.root_pss = max(peak.root_rss, rss), max(peak.root_pss, pss)
                total_rss, total_pss = total_rss + rss, total_pss + pss
                for child in root.children(recursive=True):
                    rss, pss = _mb(child)
                    peak.child_rss, peak.child_pss = max(peak.child_rss, rss), max(peak.child_pss, pss)
                    total_rss, total_pss = total_rss + rss, total_pss + pss
            except psutil.Error:
                continue  # a process that just exited or was replaced
        peak.total_rss, peak.total_pss = max(peak.total_rss, total_rss), max(peak.total_pss, total_pss)
        peak.samples += 1

    def finish(self) -> MemoryPeak:
        self._halt.set()
        self.join()
        return self.peak


def _mb(proc: psutil.Process) -> tuple[float, float]:
    info = proc.memory_full_info()
    return info.rss / 2**20, getattr(info, "pss", 0) / 2**20

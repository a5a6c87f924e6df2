"""Throwaway RabbitMQ nodes for tests: ``RabbitNode``.

``RabbitNode`` starts a private node from the local ``rabbitmq-server`` binary: its own node
name, ports, Erlang cookie, data and log directories, and config, so it can be stopped,
killed, restarted or clustered without touching any other node on the machine (the shared
broker included). A node never outlives the process that started it: ``cleanup()`` runs at
exit, and a watchdog kills the node if that process dies without running it (SIGKILL,
``os._exit``).

Start-up takes about 4-5 s on RabbitMQ 3.10 (the AMQP listener opens near the end of boot).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NoReturn

from rabbittask.errors import NodeError
from rabbittask.testing.probes import broker_answers, free_port, rabbitmq_bin_dir

# Plugins that open listeners of their own: each gets a free port bound to loopback, so a
# throwaway node never collides with the defaults (15672, 15692, 5552, 1883) of another node.
_PLUGIN_LISTENERS: dict[str, tuple[str, ...]] = {
    "rabbitmq_management": ("management.tcp.port = {port}", "management.tcp.ip = 127.0.0.1"),
    "rabbitmq_prometheus": ("prometheus.tcp.port = {port}", "prometheus.tcp.ip = 127.0.0.1"),
    "rabbitmq_stream": ("stream.listeners.tcp.1 = 127.0.0.1:{port}",),
    "rabbitmq_mqtt": ("mqtt.listeners.tcp.1 = 127.0.0.1:{port}",),
}

_LOG_TAIL_LINES = 40

# Kills the node's process group and removes its directory once stdin reaches EOF, that is
# when the process that started the node is gone, however it died.
_WATCHDOG = 'read _ignored; kill -s KILL -- "-$1" 2>/dev/null; rm -rf -- "$2"'

_live_nodes: set[RabbitNode] = set()


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a TLS node: the CA its peers' certificates must chain to, its certificate and key."""

    ca_file: str
    cert_file: str
    key_file: str


# Enabled on every throwaway node, as `make test` enables them on the broker it sets up.
DEFAULT_PLUGINS = ("rabbitmq_consistent_hash_exchange",)


class RabbitNode:
    """A private RabbitMQ node on free loopback ports, for tests that stop, kill or restart a broker.

    Use as a context manager (``with RabbitNode() as node:``) or call ``start()`` and ``cleanup()``.
    ``extra_config`` lines are appended to its rabbitmq.conf (e.g. ``"consumer_timeout = 5000"``);
    ``advanced_config`` is the text of its advanced.config, for settings rabbitmq.conf cannot carry (e.g.
    ``"[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 5000}]}]."``);
    ``plugins`` are enabled at boot, each listener of theirs on a port of its own, besides
    ``DEFAULT_PLUGINS`` (what partitioned queues need) unless ``default_plugins`` is False.
    Nodes that share a ``cookie`` can be clustered with ``ctl("join_cluster", other.nodename)``.

    ``netns`` runs the node (and its CLI commands) in that Linux network namespace, listening on
    ``host`` (an address of the namespace): a "host" of its own whose link a test can cut. Such a
    node uses long Erlang names on its IP (``rt-PORT@10.0.0.2``) and its namespace's own epmd.
    """

    def __init__(
        self,
        extra_config: Sequence[str] = (),
        plugins: Sequence[str] = (),
        *,
        advanced_config: str = "",
        cookie: str = "",
        tls: TlsFiles | None = None,
        netns: str = "",
        host: str = "127.0.0.1",
        default_plugins: bool = True,
    ) -> None:
        self.tls = tls
        self.netns = netns
        self.host = host
        self.extra_config = tuple(extra_config)
        self.advanced_config = advanced_config
        self.plugins = tuple(dict.fromkeys([*(DEFAULT_PLUGINS if default_plugins else ()), *plugins]))
        self.cookie = cookie or secrets.token_hex(16)
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.plugin_ports = {name: free_port() for name in self.plugins if name in _PLUGIN_LISTENERS}
        self.nodename = f"rt-{self.amqp_port}@{'localhost' if self._loopback else host}"
        # A TLS node listens for amqps:// only; its certificate must name "localhost".
        scheme, host = ("amqps", "localhost") if tls else ("amqp", host)
        self.url = f"{scheme}://guest:guest@{host}:{self.amqp_port}/"
        self.dir: Path | None = None
        self.start_duration_s = 0.0
        self._bin_dir: Path | None = None  # looked up on start(), so a node can be built without RabbitMQ
        self._owner_pid = os.getpid()
        self._process: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<RabbitNode {self.nodename} port={self.amqp_port} running={self.running}>"

    def __enter__(self) -> RabbitNode:
        if not self.running:
            try:
                self.start()
            except BaseException:
                self.cleanup()  # __exit__ does not run when __enter__ raises
                raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()

    @property
    def _loopback(self) -> bool:
        return self.host == "127.0.0.1"

    def _in_netns(self, command: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *command] if self.netns else command

    @property
    def running(self) -> bool:
        """True while the node's OS process is alive (it may still be booting or have its app stopped)."""
        return self._process is not None and self._process.poll() is None

    @property
    def management_port(self) -> int | None:
        """The management UI/API port, if the ``rabbitmq_management`` plugin was asked for."""
        return self.plugin_ports.get("rabbitmq_management")

    @property
    def log_file(self) -> Path:
        """The node's own log file."""
        return self._path("log") / f"{self.nodename}.log"

    def start(self, timeout_s: float = 60) -> None:
        """Boot the node and return once it accepts AMQP connections; raise NodeError with the log tail if not."""
        if self.running:
            raise NodeError(f"{self.nodename} is already running")
        self._reap()  # a node that died on its own still has a watchdog to retire
        self._bin_dir = self._bin_dir or rabbitmq_bin_dir()
        if self.dir is None:
            self._prepare_dir()
        _live_nodes.add(self)
        started = time.monotonic()
        deadline = started + timeout_s
        with open(self._path("log", "startup.log"), "ab") as startup_log:
            self._process = subprocess.Popen(
                self._in_netns([str(self._bin_dir / "rabbitmq-server")]),
                env=self._env(),
                cwd=self._path(),
                stdin=subprocess.DEVNULL,
                stdout=startup_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: kill() takes beam and its helpers at once
            )
        self._watchdog = subprocess.Popen(
            ["/bin/sh", "-c", _WATCHDOG, "rabbittask-node-watchdog", str(self._process.pid), str(self._path())],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        while not self._answers(timeout_s=min(2.0, max(0.1, deadline - time.monotonic()))):
            if not self.running:
                self._fail(f"{self.nodename} exited during start-up")
            if time.monotonic() > deadline:
                self._fail(f"{self.nodename} did not accept AMQP connections within {timeout_s:.0f} s")
            time.sleep(0.1)
        # AMQP opens before plugins boot; await_startup returns when the whole node is up.
        remaining_s = max(1, int(deadline - time.monotonic()))
        try:
            self.ctl("await_startup", "--timeout", str(remaining_s), timeout_s=remaining_s + 10)
        except NodeError as e:
            self._fail(f"{self.nodename} answered AMQP but did not finish booting: {e}")
        self.start_duration_s = time.monotonic() - started

    def _answers(self, timeout_s: float) -> bool:
        if self.tls is None:
            return broker_answers(self.url, timeout_s)
        try:  # a TLS node needs a client certificate: the open port is the sign, await_startup the proof
            with socket.create_connection((self.host, self.amqp_port), timeout=timeout_s):
                return True
        except OSError:
            return False

    def stop(self, timeout_s: float = 30) -> None:
        """Stop the node gracefully (queues and messages on disk are kept); SIGKILL it after ``timeout_s``."""
        if not self.running:
            self._reap()
            return
        assert self._process is not None
        # The server script turns SIGTERM into a graceful shutdown, like `rabbitmqctl stop`,
        # without starting a CLI VM; the process exiting is the proof that the node is down.
        self._process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout_s)
        self._reap()  # SIGKILLs whatever is left

    def kill(self) -> None:
        """SIGKILL the node (beam and its helpers) like a crash: no shutdown, clients see a reset."""
        self._reap()

    def pause(self) -> None:
        """SIGSTOP the node: sockets stay open but nothing answers, like a hung or partitioned broker."""
        if self._process is not None:
            os.killpg(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused node."""
        if self._process is not None:
            os.killpg(self._process.pid, signal.SIGCONT)

    def restart(self, timeout_s: float = 60) -> None:
        """Stop the node gracefully and start it again on the same ports and data."""
        self.stop()
        self.start(timeout_s)

    def stop_app(self) -> None:
        """Stop the RabbitMQ application; the Erlang VM keeps running (clients see a closed port)."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        """Start the RabbitMQ application again after ``stop_app()``."""
        self.ctl("start_app")
        self.ctl("await_startup")

    def close_all_connections(self, reason: str = "closed by test") -> None:
        """Close every client connection on this node (clients see a connection.close from the broker)."""
        self.ctl("close_all_connections", reason)

    def ctl(self, *args: str, timeout_s: float = 60) -> str:
        """Run ``rabbitmqctl -n NODE *args`` and return its stdout; raise NodeError with stderr on failure."""
        return self.cli("rabbitmqctl", *args, timeout_s=timeout_s)

    def cli(self, tool: str, *args: str, timeout_s: float = 60) -> str:
        """Run a RabbitMQ CLI tool (``rabbitmq-queues``, ``rabbitmq-diagnostics``, ...) against this node."""
        if self.dir is None or self._bin_dir is None:
            raise NodeError(f"{self.nodename} was never started")
        command = self._in_netns([str(self._bin_dir / tool), "-n", self.nodename, *args])
        try:
            done = subprocess.run(command, env=self._env(), capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as e:
            raise NodeError(f"`{tool} {' '.join(args)}` on {self.nodename} took over {timeout_s:.0f} s") from e
        if done.returncode != 0:
            raise NodeError(
                f"`{tool} {' '.join(args)}` on {self.nodename} failed with status {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()}"
            )
        return done.stdout

    def cleanup(self) -> None:
        """Kill the node and delete its directory; safe to call more than once."""
        _live_nodes.discard(self)
        if os.getpid() != self._owner_pid:
            return  # a forked child (e.g. a worker under test) must not tear down its parent's broker
        self.kill()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The first errors and the last ``lines`` lines of the start-up output and of the node log."""
        parts = []
        for path in (self._path("log", "startup.log"), self.log_file):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()
                tail = text[-lines:]
                # The cause (e.g. an unknown config key) comes first; crash reports bury it.
                first_errors = [line for line in text[: len(text) - len(tail)] if "[error]" in line][:10]
                if first_errors:
                    parts.append(f"--- {path.name}, first errors ---\n" + "\n".join(first_errors))
                parts.append(f"--- {path.name}, last {len(tail)} lines ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def _fail(self, message: str) -> NoReturn:
        tail = self.log_tail() if self.dir is not None else ""
        self.kill()
        raise NodeError(f"{message}\n{tail}")

    def _reap(self) -> None:
        """Kill what is left of the node's process group and retire its watchdog, keeping the directory."""
        if self._process is not None:
            if self._process.poll() is None:
                # The whole group, not just the script we started: beam runs as its child.
                # (Once the script is reaped its pid may be reused, so the group is not signalled.)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
            self._process = None
        if self._watchdog is not None:
            # Kill before closing stdin: EOF alone would make it delete the data directory.
            self._watchdog.kill()
            self._watchdog.wait()
            if self._watchdog.stdin is not None:
                self._watchdog.stdin.close()
            self._watchdog = None

    def _path(self, *parts: str) -> Path:
        assert self.dir is not None
        return self.dir.joinpath(*parts)

    def _prepare_dir(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"rabbittask-{self.nodename.split('@')[0]}-"))
        for sub in ("home", "mnesia", "log", "conf.d"):
            self._path(sub).mkdir()
        cookie = self._path("home", ".erlang.cookie")
        cookie.write_text(self.cookie)
        cookie.chmod(0o400)  # Erlang refuses a cookie file that others can read
        self._path("rabbitmq-env.conf").write_text("")
        self._path("rabbitmq.conf").write_text("\n".join(self._config_lines()) + "\n")
        self._path("enabled_plugins").write_text(f"[{','.join(self.plugins)}].\n")
        if self.advanced_config:
            self._path("advanced.config").write_text(self.advanced_config.rstrip() + "\n")

    def _config_lines(self) -> Iterator[str]:
        # Loopback only: a throwaway node with guest/guest must not be reachable from the network.
        if self.tls is None:
            yield f"listeners.tcp.1 = {self.host}:{self.amqp_port}"
        else:  # TLS only, with the client's certificate required and verified
            yield "listeners.tcp = none"
            yield f"listeners.ssl.1 = {self.host}:{self.amqp_port}"
            yield f"ssl_options.cacertfile = {self.tls.ca_file}"
            yield f"ssl_options.certfile = {self.tls.cert_file}"
            yield f"ssl_options.keyfile = {self.tls.key_file}"
            yield "ssl_options.verify = verify_peer"
            yield "ssl_options.fail_if_no_peer_cert = true"
        yield "loopback_users = none"
        for name, port in self.plugin_ports.items():
            yield from (line.format(port=port) for line in _PLUGIN_LISTENERS[name])
        yield from self.extra_config

    def _env(self) -> dict[str, str]:
        # Nothing from the machine's RabbitMQ set-up may leak in (NODENAME, config files, ...).
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_") and k not in _ERL_FLAG_VARS}
        interface = "{" + self.host.replace(".", ",") + "}"
        env.update(
            HOME=str(self._path("home")),  # where both the node and the CLI find the cookie
            # Only matters if this node is the one that starts epmd (always so in a namespace of its own,
            # where peers look the node up on its address).
            ERL_EPMD_ADDRESS="127.0.0.1" if self._loopback else f"127.0.0.1,{self.host}",
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=f"-kernel inet_dist_use_interface {interface}",
            RABBITMQ_CONF_ENV_FILE=str(self._path("rabbitmq-env.conf")),
            RABBITMQ_CONFIG_FILE=str(self._path("rabbitmq.conf")),
            RABBITMQ_CONFIG_FILES=str(self._path("conf.d")),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self._path("advanced.config")),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self._path("enabled_plugins")),
            RABBITMQ_MNESIA_BASE=str(self._path("mnesia")),
            RABBITMQ_LOG_BASE=str(self._path("log")),
            # CLI tools otherwise all share the 11 ports from 35672: let the kernel pick one.
            RABBITMQ_CTL_DIST_PORT_MIN="0",
            RABBITMQ_CTL_DIST_PORT_MAX="0",
        )
        if not self._loopback:
            env["RABBITMQ_USE_LONGNAME"] = "true"  # a node name on an IP address is a long name
        return env


_ERL_FLAG_VARS = frozenset({"ERL_FLAGS", "ERL_AFLAGS", "ERL_ZFLAGS"})


def _cleanup_live_nodes() -> None:
    for node in list(_live_nodes):
        node.cleanup()


atexit.register(_cleanup_live_nodes)

"""Separate "hosts" for tests: Linux network namespaces joined by a bridge, each link of which can be cut.

`Net()` creates a hub namespace holding a bridge and attaches the test's own namespace to it as
10.X.Y.1; `add_host()` attaches a new namespace as 10.X.Y.n. `cut(host)` sets the host's port on
the bridge down: its packets stop both ways, as when a cable is pulled, while its processes and
sockets live on (no reset reaches anyone); `heal(host)` sets it up again. `close()` kills every
process left in the namespaces and deletes them. Names carry the owner's pid, so a new `Net()`
first removes what a killed run left behind.

Needs root and `ip` (iproute2); `require()` skips a test with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

import pytest

PREFIX = "rtnet"
_NAME = re.compile(rf"^{PREFIX}-(\d+)-")


def require() -> None:
    """Skip the calling test unless namespaces can be made here (root and iproute2)."""
    if shutil.which("ip") is None:
        pytest.skip("network-namespace tests need the `ip` command (apt-get install iproute2)")
    if os.geteuid() != 0:
        pytest.skip("network-namespace tests need root (ip netns add, veth pairs, a bridge)")


def ip(*args: str, check: bool = True) -> str:
    """Run `ip ARGS` and return its output; raise with its stderr on failure."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class Host:
    """A namespace on the bridge: `address` is its IP, `port` its veth end on the bridge."""

    netns: str
    address: str
    port: str

    @property
    def prefix(self) -> list[str]:
        """What to put before a command to run it on this host (`ip netns exec NS`)."""
        return ["ip", "netns", "exec", self.netns]


class Net:
    """A bridge in a namespace of its own, the test's namespace on it, and hosts added on demand."""

    def __init__(self) -> None:
        remove_stale()
        self.token = secrets.token_hex(3)
        self.hub = f"{PREFIX}-{os.getpid()}-{self.token}-hub"
        self.root_link = f"rtn{self.token}"  # the only name in the shared namespace: 9 characters
        self.subnet = _free_subnet()
        self.hosts: list[Host] = []
        self._namespaces: list[str] = []
        try:
            self._add_netns(self.hub)
            ip("-n", self.hub, "link", "add", "name", "hub", "type", "bridge")
            ip("-n", self.hub, "link", "set", "hub", "up")
            ip("-n", self.hub, "link", "add", "root", "type", "veth", "peer", "name", self.root_link, "netns", "1")
            ip("-n", self.hub, "link", "set", "root", "master", "hub", "up")
            ip("addr", "add", f"{self.subnet[1]}/{self.subnet.prefixlen}", "dev", self.root_link)
            ip("link", "set", self.root_link, "up")
        except BaseException:
            self.close()
            raise

    @property
    def gateway(self) -> str:
        """The test's own address on the bridge."""
        return str(self.subnet[1])

    def add_host(self, label: str) -> Host:
        """A new namespace on the bridge, with loopback up and the next free address."""
        netns = f"{PREFIX}-{os.getpid()}-{self.token}-{label}"
        address = str(self.subnet[len(self.hosts) + 2])
        port = f"p{len(self.hosts)}"
        self._add_netns(netns)
        ip("-n", netns, "link", "set", "lo", "up")
        ip("-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns)
        ip("-n", self.hub, "link", "set", port, "master", "hub", "up")
        ip("-n", netns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        ip("-n", netns, "link", "set", "eth0", "up")
        host = Host(netns, address, port)
        self.hosts.append(host)
        return host

    def cut(self, host: Host) -> None:
        """Pull the host's cable: nothing passes between it and anyone else until `heal`."""
        ip("-n", self.hub, "link", "set", host.port, "down")

    def heal(self, host: Host) -> None:
        """Plug the host's cable back in."""
        ip("-n", self.hub, "link", "set", host.port, "up")

    def close(self) -> None:
        """Kill what runs in the namespaces and delete them (and the test's link to the bridge)."""
        ip("link", "del", self.root_link, check=False)
        for netns in reversed(self._namespaces):
            _delete(netns)
        self._namespaces.clear()

    def _add_netns(self, netns: str) -> None:
        ip("netns", "add", netns)
        self._namespaces.append(netns)

    def __enter__(self) -> Net:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remove_stale() -> list[str]:
    """Delete the namespaces of runs whose process is gone (a killed pytest); return their names."""
    stale = []
    for line in ip("netns", "list").splitlines():
        netns = line.split()[0] if line.strip() else ""
        match = _NAME.match(netns)
        if match and not _alive(int(match.group(1))):
            _delete(netns)
            stale.append(netns)
    return stale


def _delete(netns: str) -> None:
    # A namespace lives on while a process is in it (epmd daemonizes, a node may be left): kill them first.
    for _ in range(3):
        pids = [int(p) for p in ip("netns", "pids", netns, check=False).split()]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    ip("netns", "del", netns, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_subnet() -> ipaddress.IPv4Network:
    """A random 10.x.y.0/24 that no route or address of this machine overlaps."""
    used = [
        ipaddress.ip_network(word, strict=False) for word in re.findall(r"\d+\.\d+\.\d+\.\d+/\d+", ip("-4", "addr"))
    ]
    used += [ipaddress.ip_network(word) for word in re.findall(r"^(\d+\.\d+\.\d+\.\d+/\d+)", ip("-4", "route"), re.M)]
    for _ in range(100):
        subnet = ipaddress.ip_network(f"10.{secrets.randbelow(150) + 100}.{secrets.randbelow(256)}.0/24")
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise RuntimeError("no free 10.x.y.0/24 subnet for the test network")

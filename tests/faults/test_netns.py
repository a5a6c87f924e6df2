"""The test network (tests/netns.py): hosts on a bridge reach each other, a cut link stops everything
until healed, and nothing is left behind, not even by a run that was killed."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from tests import netns
from tests.netns import PREFIX, Host, Net, ip
from tests.waiting import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(60)]

CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()"


@pytest.fixture
def net() -> Iterator[Net]:
    netns.require()
    with Net() as net:
        yield net


def reaches(host: Host, address: str, port: int) -> bool:
    """True if a TCP connection from `host` to address:port succeeds within a second."""
    done = subprocess.run([*host.prefix, sys.executable, "-c", CONNECT, address, str(port)], capture_output=True)
    return done.returncode == 0


def listen(address: str) -> tuple[socket.socket, int]:
    """A TCP server on `address` that accepts (and closes) connections until it is closed."""
    server = socket.create_server((address, 0))

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                server.accept()[0].close()

    threading.Thread(target=accept, daemon=True).start()
    return server, server.getsockname()[1]


def namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def test_hosts_reach_each_other_and_the_test_until_a_link_is_cut_and_again_once_healed(net: Net) -> None:
    a, b = net.add_host("a"), net.add_host("b")
    server, port = listen(net.gateway)
    assert reaches(a, net.gateway, port) and reaches(b, net.gateway, port)
    net.cut(a)
    assert not reaches(a, net.gateway, port)
    assert reaches(b, net.gateway, port)
    net.heal(a)
    assert reaches(a, net.gateway, port)
    server.close()


def test_close_removes_the_namespaces_their_processes_and_the_link_of_the_test() -> None:
    netns.require()
    net = Net()
    host = net.add_host("a")
    sleeper = subprocess.Popen([*host.prefix, "sleep", "60"])
    net.close()
    assert sleeper.wait(5) == -9
    assert not [n for n in namespaces() if net.token in n]
    assert net.root_link not in ip("link")


def test_namespaces_of_a_killed_run_are_removed_by_the_next_one() -> None:
    netns.require()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{PREFIX}-{dead.pid}-0000aa-hub"
    ip("netns", "add", stale)
    sleeper = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "60"])
    # the sleeper must be inside the namespace before the cleanup runs (else `ip netns exec` fails, exit 255)
    wait_until(lambda: subprocess.run(["ip", "netns", "pids", stale], capture_output=True, text=True).stdout.strip(), 5)
    with Net():
        assert stale not in namespaces()
    assert sleeper.wait(5) == -9

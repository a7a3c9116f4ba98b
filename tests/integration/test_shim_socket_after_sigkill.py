"""Regression: a SIGKILLed shim left its RPC socket ``<state>/s/<hash>`` behind for good.

The container correctly showed ``Exited (255)``, but neither ``rm -f`` nor ``down``
removed the socket file. The execution service now removes it when it cleans up after
the dead shim, and only when no one listens on it: another container's live shim keeps
its socket.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import time

from common import endpoints
from tests.harness import Instance


def _sockets(state: str) -> set[str]:
    out = set()
    for d, _dirs, names in os.walk(os.path.join(state, "s")):
        out |= {os.path.join(d, n) for n in names if stat.S_ISSOCK(os.lstat(os.path.join(d, n)).st_mode)}
    return out


def _status(dy: Instance, name: str) -> tuple[str, int]:
    c = json.loads(dy.cli("inspect", name, check=True).stdout)[0]
    return c["State"]["Status"], c["State"]["ExitCode"]


def test_sigkilled_shim_leaves_no_socket(dy: Instance) -> None:
    victim = dy.cli("run", "-d", "--name", "victim", "busybox", "sleep", "300", check=True).stdout.decode().strip()
    other = dy.cli("run", "-d", "--name", "other", "busybox", "sleep", "300", check=True).stdout.decode().strip()
    victim_sock = endpoints.shim_endpoint("default", victim, dy.env).removeprefix("ipc://")
    other_sock = endpoints.shim_endpoint("default", other, dy.env).removeprefix("ipc://")
    assert _sockets(dy.state) == {victim_sock, other_sock}

    with open(os.path.join(endpoints.bundle_dir("default", victim, dy.env), "shim.pid")) as f:
        os.kill(int(f.read()), signal.SIGKILL)
    deadline = time.monotonic() + 15
    while _status(dy, "victim") != ("exited", 255) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _status(dy, "victim") == ("exited", 255)
    assert _sockets(dy.state) == {other_sock}  # cleaned with the dead shim, the live one untouched

    dy.cli("rm", "-f", "victim", check=True)
    assert _sockets(dy.state) == {other_sock}
    assert _status(dy, "other") == ("running", 0)
    dy.cli("rm", "-f", "other", check=True)
    deadline = time.monotonic() + 10
    while _sockets(dy.state) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _sockets(dy.state) == set()

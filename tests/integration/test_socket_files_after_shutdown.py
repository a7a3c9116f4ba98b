"""Socket files of the gateway and the events service after a shutdown.

Regression: after ``dockyard down`` the gateway's ``dockyard.sock`` and the events
service's XSUB/XPUB files (``events-in.sock``, ``events-out.sock``) stayed in the state
dir. A clean shutdown removes them, but only while they are still the service's own
(same inode as bound: a successor's socket at the same path is left alone), and a
SIGKILLed service's stale files are replaced when it starts again.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

from tests.conftest import need_root
from tests.harness import Instance

SOCKETS = ("dockyard.sock", "events-in.sock", "events-out.sock")


def _inodes(inst: Instance) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for name in SOCKETS:
        try:
            out[name] = os.stat(Path(inst.state) / name).st_ino
        except FileNotFoundError:
            out[name] = None
    return out


def _ping(inst: Instance) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(Path(inst.state) / "dockyard.sock"))
        s.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_down_removes_the_gateway_and_events_socket_files(instance: Instance) -> None:
    need_root()
    r = instance.cli("up", timeout=90)
    assert r.returncode == 0, r.stderr.decode() + instance.log_tail("supervisor")
    assert all(_inodes(instance).values()), _inodes(instance)
    r = instance.cli("down", timeout=90)
    assert r.returncode == 0, r.stderr
    left = sorted(p.name for p in Path(instance.state).iterdir() if p.name.endswith(".sock"))
    assert left == [], left


def test_sigkilled_services_restart_over_stale_files_then_remove_only_their_own(instance: Instance) -> None:
    need_root()
    instance.start("events", "gateway")
    first = _inodes(instance)
    assert all(first.values()), first
    assert b"200 OK" in _ping(instance)
    for name in ("gateway", "events"):
        instance.kill(name, signal.SIGKILL)
    assert _inodes(instance) == first  # a SIGKILLed service leaves its files: stale now

    instance.start("events", "gateway")  # binding replaces the stale files (the inode may be reused)
    assert all(_inodes(instance).values())
    assert b"200 OK" in _ping(instance)
    with instance.client("events") as c:
        assert c.call("events.health", {})

    # a successor's socket now sits at dockyard.sock: the gateway's shutdown must leave it
    successor_path = Path(instance.state) / "successor.sock"
    successor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        successor.bind(str(successor_path))
        os.rename(successor_path, Path(instance.state) / "dockyard.sock")
        theirs = os.stat(Path(instance.state) / "dockyard.sock").st_ino
        instance.kill("gateway", signal.SIGTERM)
        instance.kill("events", signal.SIGTERM)
        assert instance.procs["gateway"].returncode == 0 and instance.procs["events"].returncode == 0
        after = _inodes(instance)
        assert after == {"dockyard.sock": theirs, "events-in.sock": None, "events-out.sock": None}, after
    finally:
        successor.close()

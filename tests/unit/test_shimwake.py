"""``common.shimwake``: waking a sleeping shim and waiting for it, against a stand-in monitor
(a listening unix socket served by a thread that behaves as ``idle.c`` does)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import pytest

from common import errors, shimwake


def _monitor(path: str, *, wake_on_byte: bool = True, after_s: float | None = None) -> threading.Thread:
    """Accept connections on ``path``; close them all when a byte comes (or after ``after_s``)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    listener.settimeout(0.05)

    def serve() -> None:
        clients: list[socket.socket] = []
        deadline = None if after_s is None else time.monotonic() + after_s
        try:
            while True:
                try:
                    c, _ = listener.accept()
                    c.settimeout(0.01)
                    clients.append(c)
                except TimeoutError:
                    pass
                woke = deadline is not None and time.monotonic() >= deadline
                for c in clients:
                    try:
                        if c.recv(1) and wake_on_byte:
                            woke = True
                    except (TimeoutError, OSError):
                        pass
                if woke:
                    return
        finally:
            for c in clients:
                c.close()
            listener.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_wake_path_is_beside_the_endpoint() -> None:
    assert shimwake.wake_path("ipc:///run/dockyard/s/abc") == "/run/dockyard/s/abc.w"


def test_an_awake_shim_is_not_waited_for(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/shim"
    assert asyncio.run(shimwake.wake(endpoint)) is False
    assert asyncio.run(shimwake.wait_awake(endpoint)) is False
    # a stale socket file nobody listens on: awake (or gone) too
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(shimwake.wake_path(endpoint))
    stale.close()
    assert asyncio.run(shimwake.wake(endpoint)) is False


def test_wake_sends_a_byte_and_returns_once_the_monitor_let_go(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/shim"
    t = _monitor(shimwake.wake_path(endpoint))
    assert asyncio.run(asyncio.wait_for(shimwake.wake(endpoint), 5)) is True
    t.join(2)
    assert not t.is_alive()


def test_wait_awake_does_not_wake_and_returns_at_the_next_wake(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/shim"
    t = _monitor(shimwake.wake_path(endpoint), after_s=0.3)

    async def main() -> tuple[bool, float]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        return await asyncio.wait_for(shimwake.wait_awake(endpoint), 5), loop.time() - t0

    woke, waited = asyncio.run(main())
    assert woke is True and waited >= 0.25, "it waited for the monitor's own wake, sending nothing"
    t.join(2)


def test_a_monitor_that_never_lets_go_is_unavailable(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/shim"
    _monitor(shimwake.wake_path(endpoint), wake_on_byte=False, after_s=2.0)
    with pytest.raises(errors.Unavailable, match=r"did not wake within 0\.2 s"):
        asyncio.run(shimwake.wake(endpoint, timeout_s=0.2))

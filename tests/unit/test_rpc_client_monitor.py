"""Closing an ``AsyncClient`` that watches its peer (``watch_peer``) while the peer goes away.

libzmq writes each monitor event to the monitor's PAIR socket with a blocking send from the
context's I/O thread: with our end of that PAIR closed while the socket still monitored, a
disconnect at that moment blocked the I/O thread for good, and every socket of the process
with it (the execution service stopped answering after a failed start: its early client of
the shim was closed as the shim exited). The monitor is now disabled before its PAIR closes.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from common import errors
from common.rpc import zasync
from common.rpc.aio import AsyncClient

PROJECT = Path(__file__).resolve().parent.parent.parent

SCRIPT = r"""
import asyncio, sys, zmq
from common.rpc import zasync
from common.rpc.aio import AsyncClient

async def main(base: str) -> None:
    ctx = zasync.Context.instance()
    peers = zmq.Context()
    for i in range(40):
        endpoint = f"ipc://{base}/p{i}"
        router = peers.socket(zmq.ROUTER)
        router.bind(endpoint)
        client = AsyncClient("shim", endpoint, watch_peer=True, context=ctx)
        client.connect()
        await asyncio.sleep(0.005)
        router.close(linger=0)  # the peer goes away as the client is closed
        await client.close()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind(f"ipc://{base}/check")
    b.connect(f"ipc://{base}/check")
    await b.send(b"x")
    print("alive" if await a.poll(3000) else "stuck", flush=True)

asyncio.run(main(sys.argv[1]))
"""


def test_closing_a_watching_client_as_its_peer_leaves_keeps_the_io_thread(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, capture_output=True, timeout=30, check=False
        )
    except subprocess.TimeoutExpired:
        raise AssertionError("the process hung: its zmq I/O thread is blocked") from None
    assert proc.stdout.decode().strip() == "alive", proc.stderr.decode()[-2000:]


def test_the_watch_still_fails_calls_when_the_peer_goes(tmp_path: Path) -> None:
    async def go() -> None:
        peers = zasync.Context()
        router = peers.socket(zmq.ROUTER)
        endpoint = f"ipc://{tmp_path}/r"
        router.bind(endpoint)
        client = AsyncClient("shim", endpoint, watch_peer=True)
        call = await client.start("shim.state", {})
        await router.recv_multipart()
        router.close(linger=0)  # SIGKILL of the service, as the client sees it
        with pytest.raises(errors.Unavailable):
            await asyncio.wait_for(call.result(), 5)
        await client.close()
        peers.term()

    asyncio.run(go())


def test_a_call_waiting_for_its_connection_fails_unavailable_when_the_client_closes(tmp_path: Path) -> None:
    """``close`` while a call waits for the connection (a sleeping shim's wake: up to 30 s) makes
    the call fail ``Unavailable``, as a call to a gone peer does, not cancel its caller. The
    execution service closes a dead shim's client in its clean-up; ``rm -f`` of a container
    whose sleeping shim was SIGKILLed as the removal woke it got the ``CancelledError`` in the
    handler, answered nothing, and the CLI said "execution service not answering" 3 s later
    with the container left behind (4 of 8 tries, DOCKYARD_SHIM_IDLE_S=2)."""

    async def go() -> None:
        client = AsyncClient("shim", f"ipc://{tmp_path}/nobody", connect_timeout_s=10)
        call = asyncio.ensure_future(client.call("shim.kill", {"signal": 9}, timeout_s=10))
        await asyncio.sleep(0.2)
        await client.close()
        with pytest.raises(errors.Unavailable):
            await asyncio.wait_for(call, 5)

    asyncio.run(go())


def test_a_cancelled_caller_waiting_for_its_connection_is_still_cancelled(tmp_path: Path) -> None:
    async def go() -> None:
        client = AsyncClient("shim", f"ipc://{tmp_path}/nobody", connect_timeout_s=10)
        call = asyncio.ensure_future(client.call("shim.kill", {"signal": 9}, timeout_s=10))
        await asyncio.sleep(0.2)
        call.cancel()
        await client.close()
        with pytest.raises(asyncio.CancelledError):
            await call

    asyncio.run(go())

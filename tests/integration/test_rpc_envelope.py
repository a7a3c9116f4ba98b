"""The RPC envelope end to end over real ZeroMQ sockets: errors, deadlines, liveness, streams, credit."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from common import errors
from common.rpc import protocol
from common.rpc.aio import AsyncClient
from common.rpc.client import Client
from common.rpc.server import Context, RpcServer, rpc


class Echo(BaseModel):
    text: str
    n: int = 3


class _Svc:
    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.server: RpcServer | None = None

    @rpc("t.echo")
    async def echo(self, req: Echo, ctx: Context) -> dict[str, Any]:
        if req.text == "missing":
            raise errors.NotFound("thing 'missing' not found")
        if req.text == "bug":
            raise KeyError("oops")
        return {"text": req.text, "namespace": ctx.namespace}

    @rpc("t.sleep")
    async def sleep(self, req: Echo, _ctx: Context) -> str:
        await asyncio.sleep(req.n)
        return "slept"

    @rpc("t.block")
    async def block(self, req: Echo, _ctx: Context) -> str:
        time.sleep(req.n / 10)  # blocks the loop: what clients send meanwhile arrives in one batch
        return "blocked"

    @rpc("t.count", stream=True)
    async def count(self, req: Echo, _ctx: Context) -> AsyncIterator[int]:
        for i in range(req.n):
            yield i

    @rpc("t.forever", stream=True)
    async def forever(self, _req: Echo, _ctx: Context) -> AsyncIterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            self.cancelled.set()

    @rpc("t.cat", stream=True)
    async def cat(self, _req: Any, ctx: Context) -> AsyncIterator[bytes]:
        while (item := await ctx.recv()) is not None:
            yield item

    @rpc("t.slow_sink")
    async def slow_sink(self, _req: Any, ctx: Context) -> dict[str, int]:
        """Take the client's stream slowly; report the most items ever waiting unread."""
        count = queued = 0
        while True:
            queued = max(queued, ctx._incoming.qsize())
            item = await ctx.recv()
            if item is None:
                return {"count": count, "max_queued": queued}
            count += 1
            await asyncio.sleep(0.002)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, _Svc]]:
    endpoint = f"ipc://{tmp_path}/t.sock"
    svc = _Svc()
    loop = asyncio.new_event_loop()
    srv = RpcServer(endpoint, svc, name="t", heartbeat_s=0.2)
    svc.server = srv
    stopped = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(srv.start())
        loop.run_forever()
        loop.run_until_complete(srv.close(grace_s=0.5))
        stopped.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    yield endpoint, svc
    loop.call_soon_threadsafe(loop.stop)
    stopped.wait(5)


def test_unary_reply_and_errors_keep_their_class(server: tuple[str, _Svc]) -> None:
    c = Client("t", server[0], namespace="ns1")
    assert c.call("t.echo", {"text": "hi"}) == {"text": "hi", "namespace": "ns1"}
    with pytest.raises(errors.NotFound, match="thing 'missing' not found"):
        c.call("t.echo", {"text": "missing"})
    with pytest.raises(errors.Internal, match=r"^t.echo: KeyError: 'oops'$"):
        c.call("t.echo", {"text": "bug"})
    with pytest.raises(errors.InvalidArgument, match="text: Field required"):
        c.call("t.echo", {})
    with pytest.raises(errors.Unimplemented, match=r"no method 't\.nope'"):
        c.call("t.nope", {})
    with pytest.raises(errors.InvalidArgument, match=r"invalid namespace"):
        c.call("t.echo", {"text": "x"}, namespace="bad ns")


def test_deadline_is_enforced_by_the_server(server: tuple[str, _Svc]) -> None:
    c = Client("t", server[0])
    t0 = time.monotonic()
    with pytest.raises(errors.DeadlineExceeded):
        c.call("t.sleep", {"text": "", "n": 5}, timeout_s=0.5)
    assert time.monotonic() - t0 < 2


def test_heartbeats_keep_a_slow_call_alive_past_the_liveness_window(server: tuple[str, _Svc]) -> None:
    c = Client("t", server[0], liveness_s=0.6)
    assert c.call("t.sleep", {"text": "", "n": 2}, timeout_s=10) == "slept"


def test_dead_service_is_unavailable_quickly_never_a_hang(tmp_path: Path) -> None:
    c = Client("image", f"ipc://{tmp_path}/nobody.sock", connect_timeout_s=0.5)
    t0 = time.monotonic()
    with pytest.raises(errors.Unavailable, match=r"image service not answering at ipc://.*/nobody.sock"):
        c.call("image.list", {})
    assert time.monotonic() - t0 < 2


def test_long_stream_respects_credit_and_arrives_whole(server: tuple[str, _Svc]) -> None:
    c = Client("t", server[0])
    assert list(c.stream("t.count", {"text": "", "n": 1000})) == list(range(1000))


def test_abandoning_a_stream_cancels_the_handler(server: tuple[str, _Svc]) -> None:
    c = Client("t", server[0])
    for i in c.stream("t.forever", {"text": ""}):
        if i == 10:
            break
    assert server[1].cancelled.wait(3)


def test_a_call_cancelled_in_the_same_batch_as_its_request_leaves_nothing_behind(server: tuple[str, _Svc]) -> None:
    """Regression: a cancel that came before the handler's task took its first step cancelled a
    task that never ran, so the server kept the call (and skipped the handler's clean-up)."""
    c = Client("t", server[0])
    srv = server[1].server
    assert srv is not None
    blocker = Client("t", server[0]).start("t.block", {"text": "", "n": 5})
    time.sleep(0.1)  # the server's loop is blocked now
    for _ in range(20):
        call = c.start("t.sleep", {"text": "", "n": 30}, timeout_s=None)
        c._send(protocol.control(protocol.CANCEL, call.request_id))
    assert blocker.result() == "blocked"
    deadline = time.monotonic() + 5
    while srv._calls and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not srv._calls
    assert c.call("t.echo", {"text": "still"})["text"] == "still"


def test_client_stream_with_eof(server: tuple[str, _Svc]) -> None:
    c = Client("t", server[0])
    call = c.start("t.cat", {}, timeout_s=None)
    for i in range(100):
        call.send(b"x%d" % i)
    call.send_eof()
    assert list(call) == [b"x%d" % i for i in range(100)]


def test_a_slow_handler_slows_the_client_stream_down(server: tuple[str, _Svc]) -> None:
    """Regression (``yes | dockyard run -i ... head -c 10``): the client's stream was queued
    in the service without bound; now the client waits for send credit."""
    c = Client("t", server[0])
    call = c.start("t.slow_sink", {}, timeout_s=30)
    for i in range(300):
        call.send(b"x" * 1000 + b"%d" % i)
    call.send_eof()
    reply = call.result()
    assert reply["count"] == 300
    assert reply["max_queued"] <= protocol.SEND_WINDOW + 1  # + the EOF


def test_a_client_sending_past_its_credit_fails_with_resource_exhausted(server: tuple[str, _Svc]) -> None:
    c = Client("t", server[0])
    call = c.start("t.slow_sink", {}, timeout_s=5)
    for _ in range(protocol.SEND_WINDOW * 4):  # ignoring credit, as a broken client would
        c._send(protocol.control(protocol.DATA, call.request_id, body=b"x"))
    with pytest.raises(errors.ResourceExhausted, match="past its credit"):
        call.result()


def test_async_relay_moves_at_the_pace_of_the_handler(server: tuple[str, _Svc]) -> None:
    async def main() -> dict[str, int]:
        ac = AsyncClient("t", server[0])
        try:
            call = await ac.start("t.slow_sink", {}, timeout_s=30)
            for i in range(200):
                await call.send(b"y%d" % i)
            await call.send_eof()
            return await call.result()  # type: ignore[no-any-return]
        finally:
            await ac.close()

    reply = asyncio.run(main())
    assert reply["count"] == 200 and reply["max_queued"] <= protocol.SEND_WINDOW + 1


def test_async_client_multiplexes_calls_on_one_socket(server: tuple[str, _Svc]) -> None:
    async def main() -> None:
        ac = AsyncClient("t", server[0])
        try:
            replies = await asyncio.gather(*[ac.call("t.echo", {"text": str(i)}) for i in range(50)])
            assert [r["text"] for r in replies] == [str(i) for i in range(50)]
            items = [i async for i in ac.stream("t.count", {"text": "", "n": 300})]
            assert items == list(range(300))
            with pytest.raises(errors.NotFound):
                await ac.call("t.echo", {"text": "missing"})
        finally:
            await ac.close()

    asyncio.run(main())


def test_tcp_endpoints_use_libzmq_and_carry_the_same_envelope(tmp_path: Path) -> None:
    import socket as _s

    with _s.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    loop = asyncio.new_event_loop()
    srv = RpcServer(endpoint, _Svc(), name="t")
    t = threading.Thread(target=lambda: (loop.run_until_complete(srv.start()), loop.run_forever()), daemon=True)
    t.start()
    try:
        c = Client("t", endpoint)
        assert c.call("t.echo", {"text": "tcp"})["text"] == "tcp"
        assert list(c.stream("t.count", {"text": "", "n": 5})) == [0, 1, 2, 3, 4]
    finally:
        loop.call_soon_threadsafe(loop.stop)


def test_the_blocking_client_does_not_import_pyzmq_on_ipc(server: tuple[str, _Svc]) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from common.rpc.client import Client; "
        f"print(Client('t', {server[0]!r}).call('t.echo', {{'text': 'x'}})['text']); "
        "print('zmq' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["x", "False"]


def test_a_service_dying_mid_call_is_unavailable_at_once(tmp_path: Path) -> None:
    import multiprocessing

    endpoint = f"ipc://{tmp_path}/dying.sock"

    def serve() -> None:
        async def main() -> None:
            srv = RpcServer(endpoint, _Svc(), name="t")
            await srv.start()
            await asyncio.sleep(60)

        asyncio.run(main())

    proc = multiprocessing.get_context("fork").Process(target=serve, daemon=True)
    proc.start()
    try:
        c = Client("t", endpoint, liveness_s=10)
        assert c.call("t.echo", {"text": "up"})["text"] == "up"
        call = c.start("t.sleep", {"text": "", "n": 30}, timeout_s=60)
        time.sleep(0.2)
        proc.kill()
        t0 = time.monotonic()
        with pytest.raises(errors.Unavailable, match="t service not answering"):
            call.result()
        assert time.monotonic() - t0 < 2
    finally:
        proc.kill()
        proc.join()


def test_a_watching_async_client_fails_its_calls_at_once_when_the_service_dies(tmp_path: Path) -> None:
    """What broke: the gateway noticed a SIGKILLed execution service only after the liveness
    window (3 s of silence); with ``watch_peer`` the dropped connection fails the calls in flight."""
    import multiprocessing

    endpoint = f"ipc://{tmp_path}/dying.sock"

    def serve() -> None:
        async def main() -> None:
            srv = RpcServer(endpoint, _Svc(), name="t")
            await srv.start()
            await asyncio.sleep(60)

        asyncio.run(main())

    proc = multiprocessing.get_context("fork").Process(target=serve, daemon=True)
    proc.start()

    async def main() -> float:
        ac = AsyncClient("t", endpoint, liveness_s=10, watch_peer=True)
        try:
            assert (await ac.call("t.echo", {"text": "up"}))["text"] == "up"
            call = await ac.start("t.forever", {"text": ""}, timeout_s=None)
            assert await call.next_frame() == (True, 0)
            proc.kill()
            t0 = time.monotonic()
            with pytest.raises(errors.Unavailable, match="t service not answering"):
                while True:
                    await call.next_frame()
            assert not call.ended  # lost, not refused: a caller may resume
            return time.monotonic() - t0
        finally:
            await ac.close()

    try:
        assert asyncio.run(main()) < 2
    finally:
        proc.kill()
        proc.join()


def test_close_removes_its_ipc_socket_file_but_not_a_successors(tmp_path: Path) -> None:
    async def main() -> None:
        path = tmp_path / "s.sock"
        first = RpcServer(f"ipc://{path}", _Svc(), name="t")
        await first.start()
        assert path.is_socket()
        await first.close(grace_s=0.1)
        assert not path.exists()  # no socket file outlives its server (a shim's, a service's)

        old = RpcServer(f"ipc://{path}", _Svc(), name="t")
        await old.start()
        new = RpcServer(f"ipc://{path}", _Svc(), name="t")  # a successor binds the same path
        await new.start()
        await old.close(grace_s=0.1)
        assert path.is_socket()  # the successor's file stays
        client = AsyncClient("t", f"ipc://{path}", timeout_s=5)
        try:
            assert (await client.call("t.echo", {"text": "hi"}))["text"] == "hi"  # and it still answers
        finally:
            await client.close()
        await new.close(grace_s=0.1)
        assert not path.exists()

    asyncio.run(main())

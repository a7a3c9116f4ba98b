"""``common.rpc.zasync``: awaitable zmq sockets on the descriptor's edge-triggered contract."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import zmq

from common.rpc import zasync


def _pair(ctx: zasync.Context, tmp_path: Path, name: str = "p") -> tuple[zasync.Socket, zasync.Socket]:
    a, b = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
    for s in (a, b):
        s.setsockopt(zmq.LINGER, 0)
    a.bind(f"ipc://{tmp_path}/{name}")
    b.connect(f"ipc://{tmp_path}/{name}")
    return a, b


def test_messages_both_ways_while_each_side_also_waits_to_receive(tmp_path: Path) -> None:
    """Each side's sends run while its own reader waits: a send that consumes the descriptor's
    edge must not leave the reader asleep (the re-check after every operation)."""

    async def go() -> None:
        ctx = zasync.Context()
        a, b = _pair(ctx, tmp_path)
        n = 2000
        got_a: list[bytes] = []
        got_b: list[bytes] = []

        async def reader(sock: zasync.Socket, into: list[bytes]) -> None:
            while len(into) < n:
                into.append(await sock.recv())

        async def writer(sock: zasync.Socket, tag: bytes) -> None:
            for i in range(n):
                await sock.send(tag + str(i).encode())
                if i % 7 == 0:
                    await asyncio.sleep(0)

        await asyncio.wait_for(asyncio.gather(reader(a, got_a), reader(b, got_b), writer(a, b"a"), writer(b, b"b")), 20)
        assert got_b == [b"a" + str(i).encode() for i in range(n)]
        assert got_a == [b"b" + str(i).encode() for i in range(n)]
        a.close()
        b.close()
        ctx.term()

    asyncio.run(go())


def test_multipart_frames_arrive_whole(tmp_path: Path) -> None:
    async def go() -> None:
        ctx = zasync.Context()
        a, b = _pair(ctx, tmp_path)
        waiting = asyncio.ensure_future(b.recv_multipart())
        await asyncio.sleep(0.01)
        assert not waiting.done()
        await a.send_multipart([b"one", b"", b"three"])
        assert await asyncio.wait_for(waiting, 5) == [b"one", b"", b"three"]
        a.send_multipart_nowait([b"x", b"y"])
        assert await asyncio.wait_for(b.recv_multipart(), 5) == [b"x", b"y"]
        a.close()
        b.close()
        ctx.term()

    asyncio.run(go())


def test_noblock_raises_again_instead_of_waiting(tmp_path: Path) -> None:
    async def go() -> None:
        ctx = zasync.Context()
        a, b = _pair(ctx, tmp_path)
        with pytest.raises(zmq.Again):
            await b.recv(zmq.NOBLOCK)
        lone = ctx.socket(zmq.DEALER)
        lone.setsockopt(zmq.LINGER, 0)
        lone.setsockopt(zmq.IMMEDIATE, 1)
        lone.connect(f"ipc://{tmp_path}/nobody")
        with pytest.raises(zmq.Again):  # no peer: nothing can be queued
            await lone.send(b"x", zmq.NOBLOCK)
        for s in (a, b, lone):
            s.close()
        ctx.term()

    asyncio.run(go())


def test_poll_times_out_then_sees_a_message(tmp_path: Path) -> None:
    async def go() -> None:
        ctx = zasync.Context()
        a, b = _pair(ctx, tmp_path)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await b.poll(100) == 0
        assert loop.time() - t0 >= 0.09
        assert await a.poll(1000, zmq.POLLOUT) & zmq.POLLOUT
        loop.call_later(0.05, a.send_multipart_nowait, [b"late"])
        assert await b.poll(5000) & zmq.POLLIN
        assert await b.recv() == b"late"
        a.close()
        b.close()
        ctx.term()

    asyncio.run(go())


def test_close_cancels_whoever_waits(tmp_path: Path) -> None:
    async def go() -> None:
        ctx = zasync.Context()
        a, b = _pair(ctx, tmp_path)
        waiting = asyncio.ensure_future(b.recv())
        polling = asyncio.ensure_future(b.poll(None))
        await asyncio.sleep(0.01)
        b.close()
        for fut in (waiting, polling):
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(fut, 5)
        with pytest.raises(zmq.ZMQError):  # closed: no use of the socket after
            await b.recv(zmq.NOBLOCK)
        a.close()
        ctx.term()

    asyncio.run(go())


def test_a_cancelled_wait_leaves_no_waiter_behind(tmp_path: Path) -> None:
    async def go() -> None:
        ctx = zasync.Context()
        a, b = _pair(ctx, tmp_path)
        for _ in range(50):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(b.recv(), 0.001)
        assert not b.__dict__["_waiting"].readers
        await a.send(b"after")
        assert await asyncio.wait_for(b.recv(), 5) == b"after"
        a.close()
        b.close()
        ctx.term()

    asyncio.run(go())


def test_a_socket_moves_to_the_next_event_loop(tmp_path: Path) -> None:
    ctx = zasync.Context()
    a, b = _pair(ctx, tmp_path)

    async def exchange(payload: bytes) -> bytes:
        asyncio.get_running_loop().call_later(0.02, a.send_multipart_nowait, [payload])
        return await asyncio.wait_for(b.recv(), 5)

    assert asyncio.run(exchange(b"first")) == b"first"
    assert asyncio.run(exchange(b"second")) == b"second"
    a.close()
    b.close()
    ctx.term()


def test_a_send_that_consumes_the_edge_still_wakes_the_waiting_reader(tmp_path: Path) -> None:
    """The message arrives while the loop is busy; the socket's own send then processes the
    commands that made its descriptor readable, so the descriptor never fires for the reader:
    the re-check after the send must wake it."""

    async def go() -> None:
        ctx = zasync.Context()
        a, b = _pair(ctx, tmp_path)
        await a.send(b"hello")  # connected both ways
        assert await asyncio.wait_for(b.recv(), 5) == b"hello"
        reading = asyncio.ensure_future(b.recv())
        await asyncio.sleep(0.01)
        a.send_multipart_nowait([b"m"])
        time.sleep(0.05)  # the loop is blocked: the message and its command reach b meanwhile
        await b.send(b"x")  # runs before the loop polls again, and takes b's commands
        assert await asyncio.wait_for(reading, 2) == b"m"
        assert await asyncio.wait_for(a.recv(), 5) == b"x"
        a.close()
        b.close()
        ctx.term()

    asyncio.run(go())


def test_the_process_wide_context_is_ours_whatever_was_made_before() -> None:
    """``zmq.Context.instance()`` first (the synchronous client does), then ours: a plain
    context here made blocking sockets, and a test's event loop hung in ``recv``."""
    plain = zmq.Context.instance()
    ours = zasync.Context.instance()
    assert isinstance(ours, zasync.Context) and ours is not plain
    assert zasync.Context.instance() is ours
    sock = ours.socket(zmq.DEALER)
    assert isinstance(sock, zasync.Socket)
    sock.close(linger=0)


def test_reading_events_between_an_arrival_and_the_loops_look_still_wakes_the_reader(tmp_path: Path) -> None:
    """``getsockopt(zmq.EVENTS)`` outside the awaitable calls (``RpcServer.busy``, the shim's
    Sleeper once idle; ``AsyncClient``'s watch) processes the socket's commands: run between a
    message's arrival and the loop's next look at the descriptor, it consumed the edge, and the
    waiting reader never woke, for that message or any later one on the same pipe (the shim
    stopped answering the execution service). ``zmq.asyncio`` did the same (its override is on
    ``get``, not ``getsockopt``)."""

    async def go() -> None:
        ctx = zasync.Context()
        a, b = _pair(ctx, tmp_path)
        got: list[bytes] = []

        async def reader() -> None:
            while True:
                got.append(await a.recv())

        task = asyncio.ensure_future(reader())
        await asyncio.sleep(0.05)
        for i, read_events in enumerate((a.getsockopt, a.get)):
            await b.send(b"%d" % i)
            time.sleep(0.05)  # it arrives while the loop runs something else
            assert read_events(zmq.EVENTS) & zmq.POLLIN
            await asyncio.sleep(0.2)
            assert len(got) == i + 1, "the reader was not woken"
        await b.send(b"later")
        await asyncio.sleep(0.2)
        assert got == [b"0", b"1", b"later"]
        task.cancel()
        a.close()
        b.close()
        ctx.term()

    asyncio.run(go())

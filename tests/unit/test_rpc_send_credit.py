"""Send credit for the client's own stream (``common.rpc.protocol``, flow control), without sockets.

The server side (``Context.recv`` grants credit as the handler takes items) and both clients
(``Call.send`` / ``AsyncCall.send`` wait when out of credit) are driven with fake transports.
Regression for ``yes | dockyard run -i ... head -c 10`` filling the execution service's memory.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from common import codec, errors
from common.rpc import protocol
from common.rpc.aio import AsyncCall
from common.rpc.client import Call
from common.rpc.server import Context

RID = "r1"


def _reply(body: Any, more: bool = True) -> bytes:
    return protocol.reply(RID, body, more=more)


class _FakeClient:
    """Stands in for ``Client``: records what is sent, hands out scripted frames."""

    service = "t"
    endpoint = "ipc:///nowhere"
    liveness_s = 0.3

    def __init__(self, incoming: list[bytes]) -> None:
        self.incoming = incoming
        self.sent: list[dict[str, Any]] = []

    def _send(self, payload: bytes, wait_s: float = 0.0) -> None:
        self.sent.append(codec.decode(payload))

    def _recv(self, timeout_ms: int) -> bytes | None:
        return self.incoming.pop(0) if self.incoming else None

    def data_sent(self) -> list[Any]:
        return [m["body"] for m in self.sent if m["k"] == protocol.DATA]


def _call(client: _FakeClient) -> Call:
    return Call(client, "t.cat", RID, None, protocol.DEFAULT_WINDOW)  # type: ignore[arg-type]


def test_context_recv_grants_credit_in_half_window_batches() -> None:
    async def main() -> list[int]:
        ctx = Context(RID, "t.cat", "default", {}, None)
        grants: list[int] = []

        async def grant(n: int) -> None:
            grants.append(n)

        ctx._grant = grant
        for i in range(protocol.SEND_WINDOW):
            ctx._incoming.put_nowait(i)
        ctx._incoming.put_nowait(object())  # anything; then EOF
        for _ in range(protocol.SEND_WINDOW):
            await ctx.recv()
        return grants

    half = protocol.SEND_WINDOW // 2
    assert asyncio.run(main()) == [half, half]


def test_blocking_send_stops_at_the_window_until_the_service_grants_credit() -> None:
    client = _FakeClient([])
    call = _call(client)
    for i in range(protocol.SEND_WINDOW):
        assert call.can_send
        call.send(i)
    assert not call.can_send
    # out of credit: send waits; the service's output and then its grant arrive meanwhile
    client.incoming += [_reply({"d": b"out"}), protocol.credit(RID, 2)]
    call.send("late")
    assert client.data_sent() == [*range(protocol.SEND_WINDOW), "late"]
    assert call.can_send and call.send_credit == 1
    # the output read while waiting is not lost: next_frame returns it first
    assert call.next_frame(timeout_ms=0) == (True, {"d": b"out"})
    assert call.next_frame(timeout_ms=0) == (True, None)


def test_blocking_send_to_a_silent_service_raises_unavailable() -> None:
    client = _FakeClient([])
    call = _call(client)
    for i in range(protocol.SEND_WINDOW):
        call.send(i)
    with pytest.raises(errors.Unavailable, match="t service not answering"):
        call.send("one too many")


def test_blocking_send_after_the_call_ended_drops_the_data() -> None:
    """The process exited (the final frame came) while the client still had stdin: no error."""
    client = _FakeClient([])
    call = _call(client)
    for i in range(protocol.SEND_WINDOW):
        call.send(i)
    client.incoming += [_reply({"exit_code": 0}), _reply(None, more=False)]
    call.send("dropped")
    call.send("dropped too")
    assert "dropped" not in client.data_sent()
    assert call.next_frame() == (True, {"exit_code": 0})
    assert call.next_frame() == (False, None)


def test_a_version_1_service_is_not_held_to_send_credit() -> None:
    old_frame = codec.encode({"v": 1, "id": RID, "hb": True})
    client = _FakeClient([old_frame])
    call = _call(client)
    for i in range(protocol.SEND_WINDOW):
        call.send(i)
    call.send("past the window")  # hears the v1 heartbeat, then stops counting
    assert call.send_credit is None and call.can_send
    for i in range(100):
        call.send(i)
    assert len(client.data_sent()) == protocol.SEND_WINDOW + 101


class _FakeAsyncClient:
    service = "shim"
    endpoint = "ipc:///nowhere"
    liveness_s = 0.5

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self._calls: dict[str, AsyncCall] = {}

    async def _send(self, payload: bytes, wait_s: float = 0.0) -> None:
        self.sent.append(codec.decode(payload))


async def _out_of_credit(client: _FakeAsyncClient, last: str) -> tuple[AsyncCall, asyncio.Future[None]]:
    """A call that used its whole send window, and the send of ``last`` waiting for credit."""
    call = AsyncCall(client, "shim.attach", RID, None, protocol.DEFAULT_WINDOW)  # type: ignore[arg-type]
    for i in range(protocol.SEND_WINDOW):
        await call.send(i)
    blocked = asyncio.ensure_future(call.send(last))
    await asyncio.sleep(0.05)
    return call, blocked


def test_async_send_waits_for_credit_and_wakes_on_the_grant() -> None:
    async def main() -> None:
        client = _FakeAsyncClient()
        call, blocked = await _out_of_credit(client, "next")
        assert not blocked.done()  # out of credit: the relay waits instead of queueing
        call._credit(codec.decode(protocol.credit(RID, 8)))
        await asyncio.wait_for(blocked, 1)
        assert [m["body"] for m in client.sent][-1] == "next"
        assert call.send_credit == 7

    asyncio.run(main())


def test_async_send_ends_quietly_when_the_call_ends_and_fails_when_the_service_is_silent() -> None:
    async def main() -> None:
        client = _FakeAsyncClient()
        call, blocked = await _out_of_credit(client, "dropped")
        call._credit(codec.decode(_reply(None, more=False)))  # the process exited: the stream ended
        await asyncio.wait_for(blocked, 1)
        assert "dropped" not in [m["body"] for m in client.sent]

        silent = AsyncCall(client, "shim.attach", "r2", None, protocol.DEFAULT_WINDOW)  # type: ignore[arg-type]
        for i in range(protocol.SEND_WINDOW):
            await silent.send(i)
        with pytest.raises(errors.Unavailable, match="shim service not answering"):
            await asyncio.wait_for(silent.send("never"), 3)

    asyncio.run(main())

"""RpcServer.bind closes its socket when the bind fails, so the zmq context can still end.

A socket left open keeps ``zmq_ctx_term`` waiting for ever: the shim template's rehearsal
once hung that way on a bind refused for a path over the unix limit."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import zmq

from common.rpc import zasync
from common.rpc.server import RpcServer


class _Nothing:
    pass


def _terms_within(ctx: zasync.Context, timeout_s: float = 5.0) -> bool:
    done = threading.Event()

    def term() -> None:
        ctx.term()
        done.set()

    threading.Thread(target=term, daemon=True).start()
    return done.wait(timeout_s)


@pytest.mark.parametrize("why", ["path over the unix limit", "address in use"])
def test_a_failed_bind_leaves_no_socket_open(tmp_path: Path, why: str) -> None:
    ctx = zasync.Context()
    holder = None
    try:
        if why == "address in use":
            endpoint = f"ipc://@dockyard-test-bind-{os.getpid()}"
            holder = ctx.socket(zmq.ROUTER)
            holder.bind(endpoint)
        else:
            endpoint = "ipc://" + str(tmp_path / ("x" * 120))
        server = RpcServer(endpoint, _Nothing(), name="t", zmq_context=ctx)
        with pytest.raises(zmq.ZMQError) as failure:
            server.bind()
    finally:
        if holder is not None:
            holder.close(linger=0)
    # the error is still held (its traceback keeps bind's frame), as a caller that logs it later holds it
    assert failure.value is not None
    assert _terms_within(ctx), "a socket of the failed bind is still open"

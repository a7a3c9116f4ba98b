"""The Dockyard wire envelope (one msgpack document per ZeroMQ frame).

Client -> server (DEALER -> ROUTER), field ``k`` says the kind:

- ``req``: ``{v, k, id, method, namespace, deadline_ms, window, meta, body}`` opens a call.
  ``method`` is ``<service>.<verb>``; ``deadline_ms`` is an absolute unix time in
  milliseconds (0 = none); ``window`` is how many stream frames the server may send
  before it must wait for credit.
- ``data``: ``{v, k, id, body}`` one item of the client's own stream (e.g. stdin bytes),
  sent only while the client holds send credit (below); keep items at most
  ``MAX_DATA_SIZE`` bytes, credit counts frames.
- ``eof``: ``{v, k, id}`` the client's stream ended (stdin EOF); needs no credit.
- ``credit``: ``{v, k, id, n}`` the client consumed ``n`` more stream frames.
- ``ping``: ``{v, k, id}`` the client is alive (answer to a heartbeat).
- ``cancel``: ``{v, k, id}`` the client gave up; the server cancels the handler.

Server -> client:

- reply: ``{v, id, ok: true, more, body}``; ``more: true`` is one frame of a streaming
  reply, the final frame has ``more: false``.
- error: ``{v, id, ok: false, error: {code, message, details}}``, always final.
- heartbeat: ``{v, id, hb: true}`` sent every ``heartbeat_s`` while a call is in flight,
  so a client can tell a slow call from a dead service.
- credit: ``{v, id, credit: n}`` the handler took ``n`` more of the client's ``data``
  frames (``ctx.recv()``); the client may send ``n`` more. Not a reply frame: it
  neither ends the call nor counts against the client's window.

Flow control runs both ways, counted in frames. Server -> client: the server sends at
most ``window`` (from ``req``) stream frames ahead of the client's ``credit`` messages.
Client -> server (version 2): a call starts with ``SEND_WINDOW`` frames of send credit;
each ``data`` frame spends one, each server ``credit`` frame returns ``n``; a client
out of credit waits (reading the call's frames meanwhile) instead of sending, so a
handler that reads its stream slowly slows the client down and no process buffers
more than ``SEND_WINDOW`` frames of it. A server receiving ``data`` past a version 2
client's credit fails the call with ResourceExhausted. Version 1 servers grant no send
credit: a client that hears a frame with ``v < 2`` on a call stops counting for it.

No traceback ever crosses the wire: errors are the closed set of ``common.errors``.
"""

from __future__ import annotations

import posix
import time

from common import codec
from common.errors import DockyardError

TYPE_CHECKING = False  # typing costs the CLI's hot path an import; type checkers read this as typing's
if TYPE_CHECKING:
    from typing import Any

VERSION = 2
SEND_CREDIT_VERSION = 2
"""The first version whose servers grant send credit for the client's ``data`` frames."""
DEFAULT_WINDOW = 64
SEND_WINDOW = 16
"""Frames of the client's own stream in flight (sent, not yet taken by the handler) per call."""
MAX_DATA_SIZE = 1024 * 1024
"""The largest ``data`` item senders should make (credit counts frames, not bytes)."""

REQ, DATA, EOF, CREDIT, PING, CANCEL = "req", "data", "eof", "credit", "ping", "cancel"


def new_request_id() -> str:
    """Return a fresh 16-hex request id."""
    return posix.urandom(8).hex()


def deadline_ms(timeout_s: float | None) -> int:
    """Return the absolute deadline (unix ms) ``timeout_s`` from now; 0 when None."""
    if timeout_s is None:
        return 0
    return int((time.time() + timeout_s) * 1000)


def request(
    request_id: str,
    method: str,
    body: Any,
    *,
    namespace: str,
    deadline: int,
    window: int = DEFAULT_WINDOW,
    meta: dict[str, Any] | None = None,
) -> bytes:
    """Encode a ``req`` message."""
    return codec.encode(
        {
            "v": VERSION,
            "k": REQ,
            "id": request_id,
            "method": method,
            "namespace": namespace,
            "deadline_ms": deadline,
            "window": window,
            "meta": meta or {},
            "body": body,
        }
    )


def control(kind: str, request_id: str, **fields: Any) -> bytes:
    """Encode a client follow-up message (``data``, ``eof``, ``credit``, ``ping``, ``cancel``)."""
    return codec.encode({"v": VERSION, "k": kind, "id": request_id, **fields})


def reply(request_id: str, body: Any, *, more: bool = False) -> bytes:
    """Encode a reply frame (``more=True`` for one item of a stream)."""
    return codec.encode({"v": VERSION, "id": request_id, "ok": True, "more": more, "body": body})


def error(request_id: str, exc: DockyardError) -> bytes:
    """Encode a final error frame."""
    return codec.encode({"v": VERSION, "id": request_id, "ok": False, "error": exc.to_wire()})


def heartbeat(request_id: str) -> bytes:
    """Encode a heartbeat frame for an in-flight call."""
    return codec.encode({"v": VERSION, "id": request_id, "hb": True})


def credit(request_id: str, n: int) -> bytes:
    """Encode a server's grant of ``n`` more ``data`` frames of the client's stream."""
    return codec.encode({"v": VERSION, "id": request_id, "credit": n})

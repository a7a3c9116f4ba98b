"""A minimal ZMTP 3.0 DEALER over a unix socket, in pure Python.

Why: importing pyzmq costs ~60 ms, more than the whole budget of a hot CLI
command (``dockyard run --rm busybox true`` must beat ``ctr run``). The CLI's
blocking client speaks the ZeroMQ wire protocol itself on ``ipc://`` endpoints;
services keep using libzmq. Spec: ZMTP 3.0 (https://rfc.zeromq.org/spec/23/),
NULL security mechanism, socket type DEALER talking to a ROUTER:

- greeting, 64 bytes: ``FF 00*8 7F``, version ``03 00``, mechanism ``NULL`` padded
  to 20 bytes, as-server ``00``, 31 filler bytes;
- handshake: a READY command carrying the property ``Socket-Type: DEALER``; the
  peer's READY must say ``ROUTER``;
- frames: a flags byte (bit 0 MORE, bit 1 LONG size, bit 2 COMMAND), the size in
  1 byte or 8 bytes big-endian, then the body. Commands after the handshake
  (PING from 3.1 peers) are answered or ignored.

A DEALER sends our one-frame envelopes as they are (no empty delimiter frame).
"""

from __future__ import annotations

import _socket  # the C module: ``socket`` would build its enums at import (~5 ms of a CLI's budget)
import _struct  # the C module: ``struct`` is a wrapper that costs the CLI an import
import errno
import select
import time

_STRUCT_ERROR: type[Exception] = _struct.error  # type: ignore[attr-defined]  # typeshed has it in struct only

_SIGNATURE = b"\xff" + b"\x00" * 8 + b"\x7f"
_GREETING = _SIGNATURE + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31

_MORE, _LONG, _COMMAND = 0x01, 0x02, 0x04


class ZmtpError(ConnectionError):
    """The peer is not a ZMTP 3 ROUTER, or the connection broke."""


def _frame(body: bytes, flags: int = 0) -> bytes:
    if len(body) < 256:
        return bytes((flags, len(body))) + body
    return bytes((flags | _LONG,)) + _struct.pack(">Q", len(body)) + body


def _ready(socket_type: bytes) -> bytes:
    prop = bytes((11,)) + b"Socket-Type" + _struct.pack(">I", len(socket_type)) + socket_type
    return _frame(b"\x05READY" + prop, _COMMAND)


def _parse_properties(data: bytes) -> dict[bytes, bytes]:
    props = {}
    i = 0
    while i < len(data):
        n = data[i]
        name = data[i + 1 : i + 1 + n]
        i += 1 + n
        (vlen,) = _struct.unpack_from(">I", data, i)
        i += 4
        props[name.lower()] = data[i : i + vlen]
        i += vlen
    return props


class ZmtpDealer:
    """One blocking DEALER connection to the ROUTER at unix socket ``path``.

    ``connect(timeout_s)`` retries refused/missing sockets until the timeout (a
    service being restarted), then raises ``ZmtpError``.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock: _socket.socket | None = None
        self._buf = bytearray()

    def fileno(self) -> int:
        assert self._sock is not None
        return self._sock.fileno()

    def connect(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
            try:
                sock.settimeout(max(0.05, deadline - time.monotonic()))
                sock.connect(self.path)
                break
            except OSError as exc:
                sock.close()
                if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.EAGAIN) or time.monotonic() >= deadline:
                    raise ZmtpError(f"cannot connect to {self.path}: {exc.strerror or exc}") from None
                time.sleep(0.05)
        try:
            sock.sendall(_GREETING + _ready(b"DEALER"))
            self._sock = sock
            greeting = self._read_exact(64, deadline)
            if greeting[0] != 0xFF or greeting[9] != 0x7F or greeting[10] < 3:
                raise ZmtpError(f"{self.path} does not speak ZMTP 3")
            if greeting[12:32].rstrip(b"\x00") != b"NULL":
                raise ZmtpError(f"{self.path} wants a security mechanism other than NULL")
            flags, body = self._read_frame(deadline)
            if not flags & _COMMAND or not body.startswith(b"\x05READY"):
                raise ZmtpError(f"{self.path} sent no READY")
            peer_type = _parse_properties(body[6:]).get(b"socket-type", b"")
            if peer_type != b"ROUTER":
                raise ZmtpError(f"{self.path} is a {peer_type.decode(errors='replace')} socket, not a ROUTER")
            sock.settimeout(None)
        except (OSError, _STRUCT_ERROR, IndexError) as exc:
            self.close()
            raise ZmtpError(f"handshake with {self.path} failed: {exc}") from None
        except ZmtpError:
            self.close()
            raise

    def send(self, payload: bytes) -> None:
        """Send one single-frame message."""
        if self._sock is None:
            raise ZmtpError("not connected")
        try:
            self._sock.sendall(_frame(payload))
        except OSError as exc:
            self.close()
            raise ZmtpError(f"send to {self.path} failed: {exc.strerror or exc}") from None

    def recv(self, timeout_ms: int) -> bytes | None:
        """Return the next message (its last frame), or None after ``timeout_ms``.

        Raises ``ZmtpError`` when the peer closed the connection.
        """
        deadline = time.monotonic() + timeout_ms / 1000.0
        parts: list[bytes] = []
        extended = False
        while True:
            try:
                flags, body = self._read_frame(deadline)
            except TimeoutError:
                if (parts or self._buf) and not extended:  # never return half a message
                    deadline, extended = time.monotonic() + 5.0, True
                    continue
                if parts or self._buf:
                    self.close()
                    raise ZmtpError(f"{self.path} sent a truncated message") from None
                return None
            if flags & _COMMAND:
                if body.startswith(b"\x04PING"):
                    self._sock.sendall(_frame(b"\x04PONG" + body[7:], _COMMAND))  # type: ignore[union-attr]
                continue
            parts.append(body)
            if not flags & _MORE:
                return parts[-1]

    def _fill(self, deadline: float) -> None:
        assert self._sock is not None
        wait = max(0.0, deadline - time.monotonic())  # 0: poll once (recv(timeout_ms=0) must still read)
        ready, _, _ = select.select([self._sock], [], [], wait)
        if not ready:
            raise TimeoutError
        chunk = self._sock.recv(1 << 20)
        if not chunk:
            self.close()
            raise ZmtpError(f"{self.path} closed the connection")
        self._buf += chunk

    def _read_exact(self, n: int, deadline: float) -> bytes:
        while len(self._buf) < n:
            self._fill(deadline)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def _read_frame(self, deadline: float) -> tuple[int, bytes]:
        while True:
            if len(self._buf) >= 2:
                flags = self._buf[0]
                if flags & _LONG:
                    if len(self._buf) >= 9:
                        (size,) = _struct.unpack_from(">Q", self._buf, 1)
                        if len(self._buf) >= 9 + size:
                            body = bytes(self._buf[9 : 9 + size])
                            del self._buf[: 9 + size]
                            return flags, body
                else:
                    size = self._buf[1]
                    if len(self._buf) >= 2 + size:
                        body = bytes(self._buf[2 : 2 + size])
                        del self._buf[: 2 + size]
                        return flags, body
            self._fill(deadline)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf.clear()

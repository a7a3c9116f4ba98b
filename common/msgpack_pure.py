"""A pure-Python msgpack encoder and decoder for the shapes of ``common.codec``.

The CLI sends a handful of small messages per command; importing the ``msgpack``
package (its ``ext`` module builds ``collections`` and the pure-Python ``datetime``)
costs ~16 ms of each ``dockyard`` call here, more than the whole exchange. This module
writes and reads the same bytes with ``struct`` alone, for ``common.codec.use_pure()``.

Spec: https://github.com/msgpack/msgpack/blob/master/spec.md. Encoding follows
msgpack-python's ``packb(obj, use_bin_type=True, datetime=True)`` byte for byte (the
smallest int/str/bin/array/map format; floats as float 64; tuples as arrays; aware
``datetime`` objects as the Timestamp extension, type -1, in its 32-, 64- or 96-bit
form); anything else goes through ``default`` once, as msgpack-python does. Decoding
follows ``unpackb(raw=False, timestamp=3, strict_map_key=True)``: str as ``str``, bin as
``bytes``, arrays as lists, map keys only ``str`` or ``bytes``, timestamps as aware UTC
datetimes. ``tests/unit/test_msgpack_pure.py`` checks both directions against msgpack.

Errors: ``packb`` raises ``TypeError`` for an unsupported object, ``OverflowError`` for
an int outside [-2**63, 2**64), ``ValueError`` past ``MAX_DEPTH`` nested containers;
``unpackb`` raises ``ValueError`` for truncated, trailing, reserved or unsupported data.
"""

from __future__ import annotations

import _struct  # the C module: ``struct`` is a wrapper that costs the CLI an import

_STRUCT_ERROR: type[Exception] = _struct.error  # type: ignore[attr-defined]  # typeshed has it in struct only

try:  # the C module: ``datetime`` would first build its pure-Python classes (~4 ms)
    from _datetime import UTC, datetime, timedelta
except ImportError:  # pragma: no cover - CPython always has it
    from datetime import UTC, datetime, timedelta

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

MAX_DEPTH = 256
"""Deepest nesting of arrays and maps either way (Dockyard's documents are a few levels deep)."""

_UTC = UTC
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_TIMESTAMP = -1

_U8, _U16, _U32, _U64 = (_struct.Struct(">" + c) for c in "BHIQ")
_I8, _I16, _I32, _I64 = (_struct.Struct(">" + c) for c in "bhiq")
_F32, _F64 = _struct.Struct(">f"), _struct.Struct(">d")
_B, _H, _I, _Q = _U8.pack, _U16.pack, _U32.pack, _U64.pack
_b, _h, _i, _q = _I8.pack, _I16.pack, _I32.pack, _I64.pack
_d = _F64.pack


def packb(obj: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """Encode ``obj`` as one msgpack document (see the module docstring)."""
    out: list[bytes] = []
    try:
        _pack(obj, out, default, 0)
    except RecursionError:
        raise ValueError("recursion limit exceeded") from None
    return b"".join(out)


def _header(n: int, fix: int, fix_max: int, c8: int | None, c16: int, c32: int) -> bytes:
    if n <= fix_max:
        return _B(fix | n)
    if c8 is not None and n < 0x100:
        return _B(c8) + _B(n)
    if n < 0x10000:
        return _B(c16) + _H(n)
    if n < 0x100000000:
        return _B(c32) + _I(n)
    raise ValueError(f"object too large for msgpack ({n} items or bytes)")


def _pack_int(n: int, out: list[bytes]) -> None:
    if n >= 0:
        if n < 0x80:
            out.append(_B(n))
        elif n < 0x100:
            out.append(b"\xcc" + _B(n))
        elif n < 0x10000:
            out.append(b"\xcd" + _H(n))
        elif n < 0x100000000:
            out.append(b"\xce" + _I(n))
        elif n < 0x10000000000000000:
            out.append(b"\xcf" + _Q(n))
        else:
            raise OverflowError("int too big to encode in msgpack")
    elif n >= -0x20:
        out.append(_b(n))
    elif n >= -0x80:
        out.append(b"\xd0" + _b(n))
    elif n >= -0x8000:
        out.append(b"\xd1" + _h(n))
    elif n >= -0x80000000:
        out.append(b"\xd2" + _i(n))
    elif n >= -0x8000000000000000:
        out.append(b"\xd3" + _q(n))
    else:
        raise OverflowError("int too small to encode in msgpack")


def _pack_timestamp(dt: datetime, out: list[bytes]) -> None:
    delta = dt - _EPOCH
    seconds = delta.days * 86400 + delta.seconds
    nanos = delta.microseconds * 1000
    if seconds >> 34 == 0:
        data64 = nanos << 34 | seconds
        if data64 & 0xFFFFFFFF00000000 == 0:
            out.append(b"\xd6\xff" + _I(data64))
        else:
            out.append(b"\xd7\xff" + _Q(data64))
    else:
        out.append(b"\xc7\x0c\xff" + _I(nanos) + _q(seconds))


def _pack(obj: Any, out: list[bytes], default: Callable[[Any], Any] | None, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError("recursion limit exceeded")
    for attempt in (0, 1):
        if obj is None:
            out.append(b"\xc0")
        elif obj is True:
            out.append(b"\xc3")
        elif obj is False:
            out.append(b"\xc2")
        elif isinstance(obj, int):
            _pack_int(int(obj), out)
        elif isinstance(obj, float):
            out.append(b"\xcb" + _d(obj))
        elif isinstance(obj, str):
            data = obj.encode("utf-8")
            out.append(_header(len(data), 0xA0, 31, 0xD9, 0xDA, 0xDB))
            out.append(data)
        elif isinstance(obj, (bytes, bytearray, memoryview)):
            data = bytes(obj)
            out.append(_header(len(data), 0, -1, 0xC4, 0xC5, 0xC6))
            out.append(data)
        elif isinstance(obj, dict):
            out.append(_header(len(obj), 0x80, 15, None, 0xDE, 0xDF))
            for key, value in obj.items():
                _pack(key, out, default, depth + 1)
                _pack(value, out, default, depth + 1)
        elif isinstance(obj, (list, tuple)):
            out.append(_header(len(obj), 0x90, 15, None, 0xDC, 0xDD))
            for item in obj:
                _pack(item, out, default, depth + 1)
        elif type(obj) is datetime and obj.tzinfo is not None:
            _pack_timestamp(obj, out)
        elif attempt == 0 and default is not None:
            obj = default(obj)
            continue
        else:
            raise TypeError(f"can not serialize {type(obj).__name__!r} object")
        return


def unpackb(data: bytes) -> Any:
    """Decode one msgpack document that fills ``data`` (see the module docstring)."""
    view = bytes(data)
    try:
        obj, end = _unpack(view, 0, 0)
    except (IndexError, _STRUCT_ERROR):
        raise ValueError("Unpack failed: incomplete input") from None
    except (OverflowError, RecursionError, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed msgpack document: {exc}") from None
    if end != len(view):
        raise ValueError(f"{len(view) - end} bytes of extra data after the document")
    return obj


def _take(data: bytes, pos: int, n: int) -> tuple[bytes, int]:
    end = pos + n
    if end > len(data):
        raise IndexError
    return data[pos:end], end


def _unpack(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise ValueError("nesting too deep")
    b = data[pos]
    pos += 1
    if b <= 0x7F:
        return b, pos
    if b >= 0xE0:
        return b - 0x100, pos
    if 0xA0 <= b <= 0xBF:
        raw, pos = _take(data, pos, b & 0x1F)
        return raw.decode("utf-8"), pos
    if 0x90 <= b <= 0x9F:
        return _array(data, pos, b & 0x0F, depth)
    if 0x80 <= b <= 0x8F:
        return _map(data, pos, b & 0x0F, depth)
    if b == 0xC0:
        return None, pos
    if b == 0xC2:
        return False, pos
    if b == 0xC3:
        return True, pos
    fixed = _FIXED.get(b)
    if fixed is not None:
        return fixed.unpack_from(data, pos)[0], pos + fixed.size
    sized = _SIZED.get(b)
    if sized is not None:
        kind, fmt = sized
        n = fmt.unpack_from(data, pos)[0]
        pos += fmt.size
        if kind == "str":
            raw, pos = _take(data, pos, n)
            return raw.decode("utf-8"), pos
        if kind == "bin":
            return _take(data, pos, n)
        if kind == "array":
            return _array(data, pos, n, depth)
        if kind == "map":
            return _map(data, pos, n, depth)
        return _ext(data, pos, n)
    fixext = _FIXEXT.get(b)
    if fixext is not None:
        return _ext(data, pos, fixext)
    raise ValueError(f"reserved or unsupported msgpack byte 0x{b:02x}")


def _array(data: bytes, pos: int, n: int, depth: int) -> tuple[list[Any], int]:
    items = []
    for _ in range(n):
        item, pos = _unpack(data, pos, depth + 1)
        items.append(item)
    return items, pos


def _map(data: bytes, pos: int, n: int, depth: int) -> tuple[dict[Any, Any], int]:
    out = {}
    for _ in range(n):
        key, pos = _unpack(data, pos, depth + 1)
        if type(key) is not str and type(key) is not bytes:
            raise ValueError(f"{type(key).__name__} is not allowed for map key")
        out[key], pos = _unpack(data, pos, depth + 1)
    return out, pos


def _ext(data: bytes, pos: int, n: int) -> tuple[datetime, int]:
    """The extension at ``pos`` (its type byte, then ``n`` bytes): only the timestamp is known."""
    code = _I8.unpack_from(data, pos)[0]
    payload, pos = _take(data, pos + 1, n)
    return _timestamp(code, payload), pos


def _timestamp(code: int, payload: bytes) -> datetime:
    if code != _TIMESTAMP:
        raise ValueError(f"unsupported msgpack extension type {code}")
    if len(payload) == 4:
        seconds, nanos = _U32.unpack(payload)[0], 0
    elif len(payload) == 8:
        data64 = _U64.unpack(payload)[0]
        seconds, nanos = data64 & 0x3FFFFFFFF, data64 >> 34
    elif len(payload) == 12:
        nanos, seconds = _struct.unpack(">Iq", payload)
    else:
        raise ValueError(f"timestamp extension of {len(payload)} bytes")
    if nanos >= 1_000_000_000:
        raise ValueError("timestamp nanoseconds out of range")
    return _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)


_FIXED = {
    0xCA: _F32, 0xCB: _F64,
    0xCC: _U8, 0xCD: _U16, 0xCE: _U32, 0xCF: _U64,
    0xD0: _I8, 0xD1: _I16, 0xD2: _I32, 0xD3: _I64,
}  # fmt: skip
_SIZED = {
    0xD9: ("str", _U8), 0xDA: ("str", _U16), 0xDB: ("str", _U32),
    0xC4: ("bin", _U8), 0xC5: ("bin", _U16), 0xC6: ("bin", _U32),
    0xDC: ("array", _U16), 0xDD: ("array", _U32),
    0xDE: ("map", _U16), 0xDF: ("map", _U32),
    0xC7: ("ext", _U8), 0xC8: ("ext", _U16), 0xC9: ("ext", _U32),
}  # fmt: skip
_FIXEXT = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}

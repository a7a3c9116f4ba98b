"""The one msgpack codec every Dockyard process uses on the wire and on disk.

Shapes: maps with string keys, lists, str, bytes, int, float, bool, None and
timezone-aware ``datetime`` (msgpack Timestamp extension, type -1). Pydantic
models, enums and paths are lowered to those shapes on the way out; nothing
else is accepted, so an unexpected object fails loudly at the sender.

The services use the msgpack package (its C extension). The CLI calls ``use_pure()``
first: ``common.msgpack_pure`` writes and reads the same bytes without importing the
msgpack package, whose import costs more than a command's few messages.
"""

from __future__ import annotations

try:  # the C module: ``datetime`` would first build its pure-Python classes (~4 ms)
    from _datetime import UTC as _UTC
    from _datetime import datetime as _datetime_type
except ImportError:  # pragma: no cover - CPython always has it
    from datetime import UTC as _UTC
    from datetime import datetime as _datetime_type

TYPE_CHECKING = False  # typing costs the CLI's hot path an import; type checkers read this as typing's
if TYPE_CHECKING:
    from typing import Any

_msgpack: Any = None
_pure: Any = None
_pure_left = 0

PURE_MESSAGES = 256
"""How many documents ``use_pure`` covers before msgpack takes over (a long stream: logs -f)."""


def use_pure(messages: int = PURE_MESSAGES) -> None:
    """Encode and decode the next ``messages`` documents with ``common.msgpack_pure``.

    The same bytes without importing msgpack: a command's few messages cost less than the
    import. Past ``messages`` (a long output or log stream) the C extension is imported and
    used, being faster per document.
    """
    global _pure, _pure_left
    from common import msgpack_pure

    _pure = msgpack_pure
    _pure_left = messages


def _pure_codec() -> Any:
    global _pure, _pure_left
    if _pure is not None:
        _pure_left -= 1
        if _pure_left < 0:
            _pure = None
    return _pure


def load() -> Any:
    """The msgpack module, imported at the first call (``encode``/``decode`` call it; a process
    that forks workers, such as the shim template, calls it first, once for all of them)."""
    global _msgpack
    if _msgpack is None:
        import msgpack

        _msgpack = msgpack
    return _msgpack


def _default(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)
    if dump is not None:  # a pydantic model; duck-typed so the codec never imports pydantic
        return dump(mode="python", exclude_none=False)
    import enum  # (loaded already wherever an Enum exists)

    if isinstance(obj, enum.Enum):
        return obj.value
    import os  # (loaded already wherever a path object exists)

    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, _datetime_type) and obj.tzinfo is None:
        raise TypeError(f"naive datetime {obj!r} cannot be encoded; use timezone-aware UTC")
    raise TypeError(f"cannot encode {type(obj).__name__} on the wire")


def _valid_utf8(obj: Any) -> Any:
    """``obj`` with every string made valid UTF-8: each lone surrogate (Python keeps a byte
    that did not decode, in an argument, a variable or a file name, as one: ``surrogateescape``)
    becomes U+FFFD, as Go's ``encoding/json`` makes each invalid byte on Docker's wire."""
    if isinstance(obj, str):
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in obj)
    if isinstance(obj, dict):
        return {_valid_utf8(k): _valid_utf8(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_valid_utf8(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, bytes, bytearray, memoryview, _datetime_type)):
        return obj
    try:
        lowered = _default(obj)  # a model, enum, path or set, lowered as the encoder lowers it
    except TypeError:
        return obj  # the encoder says what it cannot encode
    return _valid_utf8(lowered)


def encode(obj: Any) -> bytes:
    """Encode ``obj`` as one msgpack document.

    A string that is not valid UTF-8 goes out with U+FFFD in place of its undecodable bytes
    (``_valid_utf8``). Raises ``TypeError`` for an object outside the shapes listed in the
    module docstring.
    """
    try:
        return _encode(obj)
    except UnicodeEncodeError:
        return _encode(_valid_utf8(obj))


def _encode(obj: Any) -> bytes:
    pure = _pure_codec()
    if pure is not None:
        return bytes(pure.packb(obj, default=_default))
    data: bytes = load().packb(obj, default=_default, use_bin_type=True, datetime=True)
    return data


def decode(data: bytes) -> Any:
    """Decode one msgpack document; timestamps come back as aware UTC datetimes.

    Raises ``ValueError`` (msgpack's ``ExtraData``/``FormatError`` derive from it)
    for malformed input.
    """
    pure = _pure_codec()
    if pure is not None:
        try:
            return pure.unpackb(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"malformed msgpack document: {exc}") from exc
    msgpack = load()
    try:
        return msgpack.unpackb(data, raw=False, timestamp=3, strict_map_key=True)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ValueError(f"malformed msgpack document: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ValueError(f"malformed msgpack document: {exc}") from exc


def utcnow() -> _datetime_type:
    """Return the current time as a timezone-aware UTC datetime."""
    return _datetime_type.now(_UTC)

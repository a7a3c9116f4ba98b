"""The one msgpack codec every Dockyard process uses on the wire and on disk.

Shapes: maps with string keys, lists, str, bytes, int, float, bool, None and
timezone-aware ``datetime`` (msgpack Timestamp extension, type -1). Pydantic
models, enums and paths are lowered to those shapes on the way out; nothing
else is accepted, so an unexpected object fails loudly at the sender.
"""

from __future__ import annotations

import datetime as _dt
import os

import msgpack

TYPE_CHECKING = False  # typing costs the CLI's hot path an import; type checkers read this as typing's
if TYPE_CHECKING:
    from typing import Any

_UTC = _dt.UTC


def _default(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)
    if dump is not None:  # a pydantic model; duck-typed so the codec never imports pydantic
        return dump(mode="python", exclude_none=False)
    import enum  # (loaded already wherever an Enum exists)

    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, _dt.datetime) and obj.tzinfo is None:
        raise TypeError(f"naive datetime {obj!r} cannot be encoded; use timezone-aware UTC")
    raise TypeError(f"cannot encode {type(obj).__name__} on the wire")


def encode(obj: Any) -> bytes:
    """Encode ``obj`` as one msgpack document.

    Raises ``TypeError`` for an object outside the shapes listed in the module docstring.
    """
    data: bytes = msgpack.packb(obj, default=_default, use_bin_type=True, datetime=True)
    return data


def decode(data: bytes) -> Any:
    """Decode one msgpack document; timestamps come back as aware UTC datetimes.

    Raises ``ValueError`` (msgpack's ``ExtraData``/``FormatError`` derive from it)
    for malformed input.
    """
    try:
        return msgpack.unpackb(data, raw=False, timestamp=3, strict_map_key=True)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ValueError(f"malformed msgpack document: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ValueError(f"malformed msgpack document: {exc}") from exc


def utcnow() -> _dt.datetime:
    """Return the current time as a timezone-aware UTC datetime."""
    return _dt.datetime.now(_UTC)

"""common.msgpack_pure writes and reads what msgpack-python does (the CLI's codec, see common.codec)."""

from __future__ import annotations

import datetime as dt
import enum
import random

import msgpack
import pytest

from common import msgpack_pure

UTC = dt.UTC


def _reference_pack(obj: object) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True, datetime=True))


def _reference_unpack(data: bytes) -> object:
    return msgpack.unpackb(data, raw=False, timestamp=3, strict_map_key=True)


BOUNDARY_INTS = [
    0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1,
    -1, -31, -32, -33, -127, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63),
]  # fmt: skip
LENGTHS = [0, 1, 15, 16, 31, 32, 255, 256, 65535, 65536]
TIMES = [
    dt.datetime(1970, 1, 1, tzinfo=UTC),
    dt.datetime(2026, 11, 29, 20, 25, 7, tzinfo=UTC),
    dt.datetime(2026, 11, 29, 20, 25, 7, 123456, tzinfo=UTC),
    dt.datetime(2106, 2, 7, 6, 28, 15, tzinfo=UTC),  # the last 32-bit second
    dt.datetime(2106, 2, 7, 6, 28, 16, tzinfo=UTC),  # 64-bit form
    dt.datetime(2514, 5, 30, 1, 53, 4, 999999, tzinfo=UTC),  # near the 34-bit limit
    dt.datetime(2600, 1, 1, tzinfo=UTC),  # 96-bit form
    dt.datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),  # before the epoch: 96-bit
    dt.datetime(1, 1, 1, tzinfo=UTC),
    dt.datetime(2026, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=5))),  # any aware zone
]


def _corpus() -> list[object]:
    docs: list[object] = [None, True, False, 0.0, -0.0, 1.5, 1e300, float("inf"), "", "é✓", b"", {}, []]
    docs += BOUNDARY_INTS
    for n in LENGTHS:
        docs += ["a" * n, b"\x00" * n, list(range(n)) if n < 70000 else [], {f"k{i}": i for i in range(n)}]
    docs += TIMES
    docs.append(
        {"v": 1, "k": "call", "id": "r1", "method": "execution.run", "body": {"cmd": ["true"], "env": {"A": "b"}}}
    )
    return docs


def _random_doc(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(10 if depth < 4 else 7)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        if rng.random() < 0.3:
            return rng.choice(BOUNDARY_INTS) + rng.randrange(-3, 4)
        return rng.randrange(-(2**40), 2**40)
    if kind == 2:
        return rng.uniform(-1e9, 1e9)
    if kind == 3:
        return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.choice([0, 3, 31, 32, 300])))
    if kind == 4:
        return rng.randbytes(rng.choice([0, 5, 255, 256, 70000]))
    if kind == 5:
        return rng.choice(TIMES)
    if kind == 6:
        return dt.datetime.fromtimestamp(rng.randrange(-(2**35), 2**35) / 7, UTC)
    if kind in (7, 8):
        return [_random_doc(rng, depth + 1) for _ in range(rng.choice([0, 1, 15, 16, 40]))]
    return {f"key{rng.randrange(1000)}": _random_doc(rng, depth + 1) for _ in range(rng.choice([0, 1, 15, 16, 20]))}


def _clamp(obj: object) -> object:
    """Keep ints within msgpack's range (the random walk can step outside at the boundaries)."""
    if isinstance(obj, int) and not isinstance(obj, bool):
        return max(-(2**63), min(2**64 - 1, obj))
    if isinstance(obj, list):
        return [_clamp(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _clamp(v) for k, v in obj.items()}
    return obj


def test_same_bytes_and_same_values_as_msgpack() -> None:
    rng = random.Random(8)
    docs = _corpus() + [_clamp(_random_doc(rng)) for _ in range(300)]
    for doc in docs:
        data = _reference_pack(doc)
        assert msgpack_pure.packb(doc) == data, repr(doc)[:200]
        assert msgpack_pure.unpackb(data) == _reference_unpack(data), repr(doc)[:200]


def test_subclasses_tuples_and_default_like_msgpack() -> None:
    class Color(enum.IntEnum):
        RED = 300

    class Mode(enum.StrEnum):
        FAST = "fast"

    doc = {"color": Color.RED, "mode": Mode.FAST, "pair": (1, "x"), "buf": bytearray(b"ab"), "view": memoryview(b"cd")}
    assert msgpack_pure.packb(doc) == _reference_pack(doc)

    def default(obj: object) -> object:
        if isinstance(obj, set):
            return sorted(obj)
        raise TypeError("nope")

    assert msgpack_pure.packb({"s": {3, 1}}, default=default) == msgpack.packb({"s": [1, 3]})
    with pytest.raises(TypeError):
        msgpack_pure.packb(object())
    with pytest.raises(TypeError):
        msgpack_pure.packb(dt.datetime(2020, 1, 1))  # naive: no timestamp, and no default here
    with pytest.raises(OverflowError):
        msgpack_pure.packb(2**64)
    with pytest.raises(OverflowError):
        msgpack_pure.packb(-(2**63) - 1)


@pytest.mark.parametrize(
    "data",
    [
        b"",  # nothing
        b"\xc1",  # reserved
        b"\xa5abc",  # truncated str
        b"\x92\x01",  # truncated array
        b"\xcd\x01",  # truncated uint16
        b"\x01\x02",  # trailing data
        b"\x81\x01\x02",  # int map key (strict_map_key)
        b"\xa2\xff\xfe",  # invalid UTF-8
        b"\xd4\x05\x00",  # an extension type other than the timestamp
        b"\xd6\xff",  # truncated timestamp
        b"\xd7\xff" + b"\xff" * 8,  # nanoseconds out of range
        b"\x91" * 1000 + b"\xc0",  # nesting too deep
    ],
)
def test_malformed_input_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        msgpack_pure.unpackb(data)


def test_codec_use_pure_switches_both_directions() -> None:
    import common.codec as codec

    doc = {"id": "c1", "created": dt.datetime(2026, 11, 29, tzinfo=UTC), "data": b"\x00\x01", "n": [1, 2.5, None]}
    wire = codec.encode(doc)
    saved = codec._pure, codec._pure_left
    try:
        codec.use_pure(messages=4)
        assert codec.encode(doc) == wire
        assert codec.decode(wire) == doc
        with pytest.raises(ValueError, match="malformed msgpack document"):
            codec.decode(b"\xc1")
        assert codec._pure is not None
        assert codec.decode(codec.encode(doc)) == doc  # the 4th and 5th documents: msgpack's turn
        assert codec._pure is None
        assert codec.encode(doc) == wire
    finally:
        codec._pure, codec._pure_left = saved

"""Chain IDs, layer media types vs magic bytes, and the hashing decompressing reader."""

from __future__ import annotations

import gzip
import hashlib
import io

import pytest
import zstandard

from common.errors import InvalidArgument
from services.snapshot import layers
from services.snapshot.layers import Compression

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64
D3 = "sha256:" + "c" * 64
TAR = b"x" * 257 + b"ustar\x0000" + bytes(1024 - 265)


def test_chain_id_of_first_layer_is_its_diff_id_then_hash_of_parent_space_diff() -> None:
    chain = layers.chain_ids([D1, D2, D3])
    assert chain[0] == D1
    assert chain[1] == "sha256:" + hashlib.sha256(f"{D1} {D2}".encode()).hexdigest()
    assert chain[2] == "sha256:" + hashlib.sha256(f"{chain[1]} {D3}".encode()).hexdigest()
    assert layers.chain_ids([]) == []


def test_chain_ids_refuse_malformed_diff_ids() -> None:
    with pytest.raises(InvalidArgument, match="diff ID"):
        layers.chain_ids(["sha256:xyz"])
    with pytest.raises(InvalidArgument):
        layers.chain_ids(["md5:" + "a" * 32])


@pytest.mark.parametrize(
    ("media_type", "expected"),
    [
        ("application/vnd.oci.image.layer.v1.tar", Compression.NONE),
        ("application/vnd.oci.image.layer.v1.tar+gzip", Compression.GZIP),
        ("application/vnd.oci.image.layer.v1.tar+zstd", Compression.ZSTD),
        ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", Compression.GZIP),
        ("application/vnd.docker.image.rootfs.diff.tar.gzip", Compression.GZIP),
        ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", Compression.GZIP),
        ("application/vnd.docker.image.rootfs.diff.tar.zstd", Compression.ZSTD),
    ],
)
def test_media_types_name_their_compression(media_type: str, expected: Compression) -> None:
    assert layers.compression_of(media_type) is expected


def test_unknown_media_type_is_refused_by_name() -> None:
    with pytest.raises(InvalidArgument, match="unsupported layer media type 'application/x-foo'"):
        layers.compression_of("application/x-foo")


def test_sniff_recognises_gzip_zstd_tar_and_empty() -> None:
    assert layers.sniff(gzip.compress(b"abc")) is Compression.GZIP
    assert layers.sniff(zstandard.ZstdCompressor().compress(b"abc")) is Compression.ZSTD
    assert layers.sniff(TAR) is Compression.NONE
    assert layers.sniff(bytes(1024)) is Compression.NONE
    assert layers.sniff(b"hello world" * 100) is None


def test_media_type_must_agree_with_content() -> None:
    zst = zstandard.ZstdCompressor().compress(TAR)
    with pytest.raises(InvalidArgument, match=r"'application/vnd.oci.image.layer.v1.tar\+gzip'.*zstd"):
        layers.check_media_type("application/vnd.oci.image.layer.v1.tar+gzip", zst, "sha256:1")
    with pytest.raises(InvalidArgument, match="uncompressed tar"):
        layers.check_media_type("application/vnd.oci.image.layer.v1.tar+zstd", TAR)
    with pytest.raises(InvalidArgument, match="gzip-compressed"):
        layers.check_media_type("application/vnd.oci.image.layer.v1.tar", gzip.compress(TAR))
    with pytest.raises(InvalidArgument, match="not gzip-compressed"):
        layers.check_media_type("application/vnd.oci.image.layer.v1.tar+gzip", b"garbage" * 100)
    assert layers.check_media_type("application/vnd.oci.image.layer.v1.tar+zstd", zst) is Compression.ZSTD


def _read_all(
    blob: bytes, media_type: str, chunk: int = 1000, threaded: bool = False
) -> tuple[bytes, layers.LayerReader]:
    reader = layers.open_layer(io.BytesIO(blob), media_type)
    if threaded:
        reader.start_thread()
    parts = []
    while data := reader.read(chunk):
        parts.append(data)
    reader.drain()
    return b"".join(parts), reader


@pytest.mark.parametrize("threaded", [False, True])
def test_reader_hashes_the_uncompressed_stream_of_each_compression(threaded: bool) -> None:
    raw = TAR + bytes(range(256)) * 4000
    for media_type, blob in [
        ("application/vnd.oci.image.layer.v1.tar", raw),
        ("application/vnd.oci.image.layer.v1.tar+gzip", gzip.compress(raw)),
        ("application/vnd.oci.image.layer.v1.tar+zstd", zstandard.ZstdCompressor().compress(raw)),
    ]:
        data, reader = _read_all(blob, media_type, threaded=threaded)
        assert data == raw
        assert reader.diff_id() == "sha256:" + hashlib.sha256(raw).hexdigest()
        assert reader.uncompressed_size == len(raw)


def test_reader_joins_concatenated_gzip_members_and_zstd_frames() -> None:
    a, b = TAR, b"second part" * 1000
    data, _ = _read_all(gzip.compress(a) + gzip.compress(b), "application/vnd.oci.image.layer.v1.tar+gzip")
    assert data == a + b
    c = zstandard.ZstdCompressor()
    data, _ = _read_all(c.compress(a) + c.compress(b), "application/vnd.oci.image.layer.v1.tar+zstd")
    assert data == a + b


def test_reader_accepts_zero_padding_after_gzip_but_not_garbage() -> None:
    data, _ = _read_all(gzip.compress(TAR) + bytes(4096), "application/vnd.oci.image.layer.v1.tar+gzip")
    assert data == TAR
    with pytest.raises(InvalidArgument, match="garbage after the last gzip member"):
        _read_all(gzip.compress(TAR) + b"junk", "application/vnd.oci.image.layer.v1.tar+gzip")


@pytest.mark.parametrize("threaded", [False, True])
def test_reader_reports_truncated_and_corrupt_streams(threaded: bool) -> None:
    blob = gzip.compress(TAR * 50)
    with pytest.raises(InvalidArgument, match="truncated gzip"):
        _read_all(blob[: len(blob) // 2], "application/vnd.oci.image.layer.v1.tar+gzip", threaded=threaded)
    corrupt = blob[:20] + bytes(50) + blob[70:]
    with pytest.raises(InvalidArgument, match="corrupt gzip"):
        _read_all(corrupt, "application/vnd.oci.image.layer.v1.tar+gzip")

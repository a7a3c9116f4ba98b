"""The content store: verified commits, nothing partial under a digest, resumable ingests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from common.errors import FailedPrecondition, NotFound
from services.image.content import ContentStore


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_commit_verifies_digest_and_size(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    data = b"hello world" * 1000
    ing = store.open_ingest("r1", expected=_digest(data), total=len(data))
    ing.write(data)
    info = ing.commit()
    assert info.digest == _digest(data) and info.size == len(data)
    assert store.read(info.digest) == data
    assert not list(store.ingests.iterdir())


def test_digest_mismatch_leaves_nothing(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    good = b"good bytes"
    ing = store.open_ingest("r2", expected=_digest(good), total=len(good))
    ing.write(b"evil bytes")
    with pytest.raises(FailedPrecondition, match="digest mismatch"):
        ing.commit()
    assert not store.exists(_digest(good))
    assert not store.exists(_digest(b"evil bytes"))
    assert not list(store.ingests.iterdir())
    assert not list(store.blobs.iterdir())


def test_size_mismatch_and_overflow(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    data = b"0123456789"
    ing = store.open_ingest("r3", expected=_digest(data), total=len(data))
    ing.write(data[:5])
    with pytest.raises(FailedPrecondition, match="size mismatch"):
        ing.commit()
    ing = store.open_ingest("r4", expected=_digest(data), total=len(data))
    with pytest.raises(FailedPrecondition):
        ing.write(data + b"x")


def test_ingest_resumes_where_it_stopped(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    data = bytes(range(256)) * 4096
    ing = store.open_ingest(_digest(data), expected=_digest(data), total=len(data))
    ing.write(data[:300_000])
    ing.close()  # the writer died
    again = ContentStore(tmp_path).open_ingest(_digest(data), expected=_digest(data), total=len(data))
    assert again.offset == 300_000
    again.write(data[300_000:])
    assert again.commit().digest == _digest(data)
    statuses = store.ingest_statuses()
    assert statuses == []


def test_write_blob_and_delete(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    info = store.write_blob(b"{}")
    assert store.exists(info.digest)
    assert [b.digest for b in store.walk()] == [info.digest]
    assert store.delete(info.digest)
    with pytest.raises(NotFound):
        store.read(info.digest)
    with pytest.raises(FailedPrecondition):
        store.write_blob(b"x", expected=_digest(b"y"))


def test_opening_drops_ingests_a_killed_commit_left_without_data(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    data = b"layer" * 1000
    done = store.open_ingest("committed", expected=_digest(data), total=len(data))
    done.write(data)
    done.close()
    # a kill between the commit's rename and its clean-up: the blob is there, the ingest dir too
    (done.directory / "data").rename(store.path(_digest(data)))
    half = store.open_ingest("half", total=len(data))
    half.write(data[:100])
    half.close()
    store = ContentStore(tmp_path)
    assert [i.ref for i in store.ingest_statuses()] == ["half"]  # the resumable one stays
    assert store.read(_digest(data)) == data
    assert store.open_ingest("half", total=len(data)).offset == 100

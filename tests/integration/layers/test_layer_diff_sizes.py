"""Each unpacked layer's diff size (Docker's DiffSize, what image sizes add up), on each
snapshotter: recorded with the commit, served by ``snapshot.diff_sizes``, and measured once
for a snapshot committed before diff sizes were recorded.

overlayfs measures as moby's overlay2 (``directory.Size`` of the layer's own directory:
files and symlinks by size, hard links once, whiteouts and directories nothing); native as
moby's vfs (the tar members' sizes at unpack; the change set against the parent when
measured later).
"""

from __future__ import annotations

import contextlib
import os

import pytest

from tests.snapshot_util import Direct, Layer, mounted

ZEROS = 3 * 1024 * 1024


def _layers() -> list[bytes]:
    base = (
        Layer()
        .dir("data")
        .file("data/zeros", b"\0" * ZEROS)
        .hardlink("data/zeros-again", "data/zeros")
        .symlink("data/link", "zeros")
        .file("data/gone", b"g" * 10)
    )
    top = Layer().file("data/top", b"t" * 1000).whiteout("data/link").whiteout("data/gone").dir("data/new")
    return [base.raw(), top.raw()]


def _sizes(direct: Direct, keys: list[str]) -> dict[str, int]:
    return direct.call("snapshot.diff_sizes", {"keys": keys})["diff_sizes"]  # type: ignore[no-any-return]


def test_unpack_records_each_layers_diff_size(direct: Direct) -> None:
    chain = direct.unpack(_layers())["chain_ids"]
    sizes = _sizes(direct, [*chain, "sha256:" + "0" * 64])
    if direct.service.snapshotter.name == "overlayfs":
        expected = [ZEROS + len("zeros") + 10, 1000]  # the symlink by its target's length
    else:
        expected = [ZEROS + 10, 1000]  # the tar members' sizes: the symlink weighs nothing
    assert sizes == dict(zip(chain, expected, strict=True))  # an unknown name is left out
    # what a container's snapshot holds is not an image layer's: active snapshots are left out
    direct.call("snapshot.prepare", {"key": "c", "parent": chain[-1]})
    assert _sizes(direct, ["c"]) == {}


def test_snapshots_committed_before_diff_sizes_are_measured_once(direct: Direct) -> None:
    chain = direct.unpack(_layers())["chain_ids"]
    store = direct.service.store
    store._db.execute("UPDATE snapshots SET diff_size = NULL")  # as an older version left them
    sizes = _sizes(direct, chain)
    # a first layer is its own directory's walk on both; a native layer above is its change set
    assert sizes == {chain[0]: ZEROS + len("zeros") + 10, chain[1]: 1000}
    assert [r.diff_size for r in store.committed("default", chain)] == [sizes[chain[0]], 1000]


def test_a_commit_of_an_active_snapshot_records_its_diff_size(direct: Direct) -> None:
    """``snapshot.commit`` (no layer applied) measures the changes too."""
    chain = direct.unpack(_layers())["chain_ids"]
    mounts = direct.call("snapshot.prepare", {"key": "work", "parent": chain[-1]})["mounts"]
    with mounted(mounts, direct.mount_point("work")) as root:
        with open(os.path.join(root, "data", "written"), "wb") as f:
            f.write(b"w" * 4321)
        os.unlink(os.path.join(root, "data", "top"))
    direct.call("snapshot.commit", {"key": "work", "name": "done"})
    assert _sizes(direct, ["done"]) == {"done": 4321}


def test_old_snapshots_are_all_measured_when_the_first_asker_gives_up(
    direct: Direct, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What broke: ``snapshot.diff_sizes`` measured an old database's layers one after the
    other inside the call; the image service gives up after ``DIFF_SIZES_TIMEOUT_S`` (its call
    is cancelled), which stopped the walks of the layers not yet begun. Those waited for the
    next listing, each listing waited out its 10 s again and showed compressed sizes, and
    nothing was measured while no one listed. Every walk is now under way once asked for."""
    import asyncio
    import time

    from services.snapshot import service as snapshot_service

    chain = direct.unpack(_layers())["chain_ids"]
    store = direct.service.store
    store._db.execute("UPDATE snapshots SET diff_size = NULL")
    slow = snapshot_service.differ.diff_size

    def slow_walk(source: object, **kw: object) -> int:
        time.sleep(0.3)
        return slow(source, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(snapshot_service.differ, "diff_size", slow_walk)
    from common.api.snapshot import DiffSizesRequest
    from common.rpc.server import Context

    ctx = Context("test", "snapshot.diff_sizes", "default", {}, None)

    async def ask_and_give_up() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(direct.service.diff_sizes(DiffSizesRequest(keys=chain), ctx), 0.1)
        await asyncio.sleep(1.5)  # no one asks again: the walks go on by themselves

    direct.loop.run_until_complete(ask_and_give_up())
    assert all(r.diff_size is not None for r in store.committed("default", chain))

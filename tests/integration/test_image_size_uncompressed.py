"""Image sizes are the unpacked size, as Docker shows them, not the compressed one.

``docker images`` (SIZE), ``GET /images/json`` (``Size``; ``VirtualSize`` before API 1.44),
``GET /images/{name}/json``, ``docker history`` and ``docker system df`` showed the sum of
the manifest's layer blob sizes: a layer holding 3 MiB of zeros (~3 kB gzip-compressed)
made a 3 kB image. Docker (graphdriver store) shows the sum of its layers' DiffSize, the
bytes of the files they unpack to. The diff sizes are recorded with the snapshots, so they
stay after a restart of the services, and snapshots committed by an older version (no
recorded size) are measured on the first listing.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.images import human_size
from deploy import mkimage
from tests.conftest import need_root
from tests.gateway_util import Engine, engine
from tests.image_util import call
from tests.registry import Registry, skopeo_copy
from tests.snapshot_util import Layer

pytestmark = pytest.mark.root

ZEROS = 3 * 1024 * 1024


@pytest.fixture(scope="module")
def eng() -> Iterator[Engine]:
    need_root()
    with engine() as e:
        yield e


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, mkimage.Image]]:
    """``<registry>/zeros:latest``: one layer, a directory with 3 MiB of zeros and a hard link to them."""
    need_root()
    tmp = tmp_path_factory.mktemp("zeros")
    layer = Layer().dir("data").file("data/zeros", b"\0" * ZEROS).hardlink("data/same", "data/zeros")
    img = mkimage.build_image("zeros:latest", [layer.raw()])
    archive = tmp / "zeros.tar"
    mkimage.write_oci_layout([img], str(archive))
    with Registry(tmp / "registry") as reg:
        skopeo_copy(f"oci-archive:{archive}", f"docker://{reg.host}/zeros:latest")
        yield f"{reg.host}/zeros:latest", img


def _blob_bytes(img: mkimage.Image) -> int:
    return sum(len(img.blobs[d]) for d in img.layer_digests)


def _sizes_shown(eng: Engine, ref: str, image_id: str) -> dict[str, object]:
    """Every place a user sees the image's size."""
    repo = ref.rsplit(":", 1)[0]
    out = eng.inst.cli("images", "--format", "{{.Repository}} {{.Size}}", check=True).stdout.decode()
    (row,) = [line.split()[1] for line in out.splitlines() if line.split()[0] == repo]
    (listed,) = [i for i in eng.json("GET", "/images/json") if i["Id"] == image_id]
    (old_api,) = [i for i in eng.json("GET", "/v1.43/images/json") if i["Id"] == image_id]
    history = eng.json("GET", f"/images/{image_id}/history")
    (in_df,) = [i for i in eng.json("GET", "/system/df")["Images"] if i["Id"] == image_id]
    return {
        "cli": row,
        "list": listed["Size"],
        "virtual": old_api["VirtualSize"],
        "inspect": eng.json("GET", f"/images/{image_id}/json")["Size"],
        "history": sum(step["Size"] for step in history),
        "df": in_df["Size"],
    }


def _expected() -> dict[str, object]:
    # the directory weighs nothing, the hard link is the same file: 3 MiB exactly
    return {"cli": "3.15MB", "list": ZEROS, "virtual": ZEROS, "inspect": ZEROS, "history": ZEROS, "df": ZEROS}


def _wait_gateway(eng: Engine, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if eng.api("GET", "/_ping", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("the gateway did not come back")


def test_images_show_the_unpacked_size_across_restarts(eng: Engine, pushed: tuple[str, mkimage.Image]) -> None:
    ref, img = pushed
    assert _blob_bytes(img) < 100_000  # the zeros compress to a few kB
    eng.inst.cli("pull", ref, check=True)
    assert _sizes_shown(eng, ref, img.config_digest) == _expected()
    df = eng.json("GET", "/system/df")
    assert df["LayersSize"] >= ZEROS

    # a clean restart of every service: the sizes were recorded with the snapshots
    eng.inst.cli("down", check=True)
    db = Path(eng.inst.root) / "snapshot" / "metadata.db"
    # ... and snapshots as a version that recorded no diff size left them
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE snapshots SET diff_size = NULL")
    conn.close()
    r = eng.inst.cli("up", timeout=90)
    assert r.returncode == 0, r.stderr.decode()
    _wait_gateway(eng)
    assert _sizes_shown(eng, ref, img.config_digest) == _expected()
    with sqlite3.connect(db) as conn:  # measured once, then recorded
        (recorded,) = conn.execute("SELECT diff_size FROM snapshots WHERE key = ?", (img.diff_ids[0],)).fetchone()
    conn.close()
    assert recorded == ZEROS

    # SIGKILLed snapshot and image services, restarted by the supervisor
    for name in ("snapshot", "image"):
        eng.inst.kill(name)
    for name in ("snapshot", "image"):
        eng.inst.wait_healthy(name, timeout_s=30)
    assert _sizes_shown(eng, ref, img.config_digest) == _expected()


def test_an_image_not_unpacked_shows_its_compressed_size(eng: Engine, pushed: tuple[str, mkimage.Image]) -> None:
    """Listing never waits for (nor makes) an unpack: an image whose layers are not unpacked
    shows the bytes of its layer blobs, as ``ctr images ls`` does, until they are."""
    ref, img = pushed
    eng.inst.cli("pull", ref, check=True)
    eng.inst.cli("snapshot", "rm", img.diff_ids[0], check=True)  # its only layer
    blobs = _blob_bytes(img)
    compressed = {k: blobs for k in ("list", "virtual", "inspect", "history", "df")}
    assert _sizes_shown(eng, ref, img.config_digest) == {"cli": human_size(blobs), **compressed}
    call(eng.inst, "image.resolve", {"ref": ref, "unpack": True})  # what a `run` does first
    assert _sizes_shown(eng, ref, img.config_digest) == _expected()


def test_a_tag_does_not_wait_for_a_hung_snapshot_service(eng: Engine, pushed: tuple[str, mkimage.Image]) -> None:
    """Sizes are for listings: ``tag`` names the image without asking for them."""
    ref, _img = pushed
    eng.inst.cli("pull", ref, check=True)
    pid = eng.inst.pid("snapshot")
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        r = eng.inst.cli("tag", ref, "zeros-again:1")
        took = time.monotonic() - t0
    finally:
        os.kill(pid, signal.SIGCONT)
    assert r.returncode == 0, r.stderr
    assert took < 2.0, took  # the liveness rule alone would take 3 s, the sizes' wait 10
    assert eng.inst.cli("rmi", "zeros-again:1").returncode == 0

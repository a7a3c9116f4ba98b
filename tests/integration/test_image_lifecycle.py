"""Image lifecycle: save/rmi/load identity, skopeo's docker-archive, filters, history, prune, GC.

Real image and snapshot services; archives written by ``dockyard save`` are read back by
``dockyard load`` and by skopeo, and skopeo's own docker-archive is loaded by us.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from deploy import mkimage
from tests.conftest import need_root
from tests.harness import Instance
from tests.image_util import (
    blobs,
    busybox_image,
    busybox_rootfs,
    call,
    ingests,
    names,
    random_layer,
    snapshot_dirs,
    snapshots,
)

pytestmark = pytest.mark.root


@pytest.fixture
def inst(instance: Instance) -> Instance:
    need_root()
    instance.start("snapshot", "image")
    return instance


def _load(inst: Instance, tmp_path: Path, img: mkimage.Image, fmt: str = "oci") -> None:
    path = tmp_path / f"{img.name.replace(':', '_').replace('/', '_')}.{fmt}.tar"
    (mkimage.write_oci_layout if fmt == "oci" else mkimage.write_docker_archive)([img], str(path))
    inst.cli("load", "-i", str(path), check=True)


@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_save_rmi_load_restores_an_identical_image(inst: Instance, tmp_path: Path, fmt: str) -> None:
    img = mkimage.build_image("app:2", [busybox_rootfs(), random_layer(300_000, seed=3)])
    _load(inst, tmp_path, img)
    before = call(inst, "image.get", {"ref": "app:2"})
    out = tmp_path / "saved.tar"
    inst.cli("save", "--format", fmt, "-o", str(out), "app:2", check=True)
    with tarfile.open(out) as tar:
        members = set(tar.getnames())
    assert {"oci-layout", "index.json"} <= members
    assert ("manifest.json" in members) == (fmt == "docker")
    inst.cli("rmi", "app:2", check=True)
    assert names(inst) == [] and blobs(inst) == set()
    assert "Loaded image: app:2" in inst.cli("load", "-i", str(out), check=True).stdout.decode()
    after = call(inst, "image.get", {"ref": "app:2"})
    assert after["manifest_digest"] == before["manifest_digest"] == img.manifest_digest
    assert after["target"] == before["target"]
    assert after["id"] == before["id"] and after["rootfs"] == before["rootfs"]
    assert after["unpacked"] is True


def test_saved_docker_archive_is_read_by_skopeo(inst: Instance, tmp_path: Path) -> None:
    img = busybox_image()
    _load(inst, tmp_path, img)
    out = tmp_path / "saved.tar"
    inst.cli("save", "-o", str(out), "busybox", check=True)
    for transport in ("docker-archive", "oci-archive"):
        proc = subprocess.run(["skopeo", "inspect", "--raw", f"{transport}:{out}"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(["skopeo", "inspect", "--config", f"docker-archive:{out}"], capture_output=True, text=True)
    assert json.loads(proc.stdout)["rootfs"]["diff_ids"] == img.diff_ids
    dest = tmp_path / "copied"
    proc = subprocess.run(
        ["skopeo", "copy", "--quiet", f"docker-archive:{out}", f"oci:{dest}:x"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_skopeo_docker_archive_loads(inst: Instance, tmp_path: Path) -> None:
    img = busybox_image()
    src = tmp_path / "src.tar"
    mkimage.write_oci_layout([img], str(src))
    archive = tmp_path / "skopeo-docker.tar"
    subprocess.run(
        ["skopeo", "copy", "--quiet", f"oci-archive:{src}", f"docker-archive:{archive}:skopeo/busybox:v1"],
        check=True,
        capture_output=True,
    )
    out = inst.cli("load", "-i", str(archive), check=True).stdout.decode()
    assert "Loaded image: skopeo/busybox:v1" in out
    resolved = call(inst, "image.resolve", {"ref": "skopeo/busybox:v1"})
    assert resolved["id"] == img.config_digest  # skopeo kept the config bytes
    assert resolved["chain_id"] == img.diff_ids[0]
    assert img.diff_ids[0] in {s["name"] for s in snapshots(inst)}


def test_images_filters_history_and_inspect(inst: Instance, tmp_path: Path) -> None:
    _load(inst, tmp_path, busybox_image())
    _load(inst, tmp_path, busybox_image("team/web:1", config={"Labels": {"tier": "front"}}))
    _load(inst, tmp_path, busybox_image("team/db:1", config={"Labels": {"tier": "back"}}))

    def repos(*args: str) -> list[str]:
        lines = inst.cli("images", *args, check=True).stdout.decode().splitlines()[1:]
        return sorted(f"{line.split()[0]}:{line.split()[1]}" for line in lines)

    assert repos() == ["busybox:latest", "team/db:1", "team/web:1"]
    assert repos("--filter", "reference=team/*") == ["team/db:1", "team/web:1"]
    assert repos("--filter", "reference=*:latest") == ["busybox:latest"]
    assert repos("--filter", "label=tier=front") == ["team/web:1"]
    assert repos("--filter", "label=tier") == ["team/db:1", "team/web:1"]
    assert repos("team/db") == ["team/db:1"]
    proc = inst.cli("images", "--filter", "colour=blue")
    assert proc.returncode == 1 and "invalid filter 'colour'" in proc.stderr.decode()
    history = inst.cli("history", "busybox", check=True).stdout.decode().splitlines()
    assert history[0].split()[0] == "IMAGE" and "deploy/mkimage.py" in history[1]
    info = json.loads(inst.cli("image", "inspect", "team/web:1", check=True).stdout)[0]
    assert info["Config"]["Labels"] == {"tier": "front"}
    assert info["RepoTags"] == ["team/web:1"]
    assert info["RootFS"]["Layers"] == busybox_image().diff_ids


def test_rmi_and_prune_leave_no_orphaned_data(inst: Instance, tmp_path: Path) -> None:
    a = mkimage.build_image("a:1", [busybox_rootfs(), random_layer(100_000, seed=5)])
    b = mkimage.build_image("b:1", [busybox_rootfs(), random_layer(100_000, seed=6)])
    _load(inst, tmp_path, a)
    _load(inst, tmp_path, b, fmt="docker")
    # a re-tag moves a name: the old image stays as <none> (dangling) until pruned
    inst.cli("tag", "b:1", "a:1", check=True)
    dangling = inst.cli("images", "-q", "--filter", "dangling=true", check=True).stdout.decode().split()
    assert dangling == [a.config_digest.split(":")[1][:12]]
    inst.cli("rmi", "a:1", "b:1", check=True)
    assert names(inst) == [f"<none>@{a.manifest_digest}"]
    out = inst.cli("image", "prune", "-f", check=True).stdout.decode()
    assert f"deleted: {a.config_digest}" in out and "Total reclaimed space" in out
    assert names(inst) == []
    assert blobs(inst) == set() and ingests(inst) == []
    assert snapshots(inst) == [] and snapshot_dirs(inst) == []
    # prune -a removes images that are still named (no container uses them here)
    _load(inst, tmp_path, a)
    inst.cli("image", "prune", "-a", "-f", check=True)
    assert names(inst) == [] and blobs(inst) == set() and snapshots(inst) == []

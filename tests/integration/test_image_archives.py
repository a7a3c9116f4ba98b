"""The image service with real archives: docker load, OCI layouts, docker import, rmi.

Real ``services.image`` and ``services.snapshot`` processes (the snapshot service needs
root for overlayfs); images are built offline by ``deploy/mkimage.py`` from the host's
busybox-static.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from deploy import mkimage
from tests.conftest import need_root
from tests.engine import prepare_runtime
from tests.harness import Instance
from tests.image_util import (
    blobs,
    busybox_image,
    busybox_rootfs,
    call,
    ingests,
    names,
    sha256,
    snapshot_dirs,
    snapshots,
)

pytestmark = pytest.mark.root


@pytest.fixture
def inst(instance: Instance) -> Instance:
    need_root()
    instance.start("snapshot", "image")
    return instance


def test_load_docker_archive_keeps_dockers_image_id_and_unpacks(inst: Instance, tmp_path: Path) -> None:
    img = busybox_image()
    archive = tmp_path / "busybox.tar"
    mkimage.write_docker_archive([img], str(archive))
    proc = inst.cli("load", "-i", str(archive), check=True)
    assert proc.stdout.decode().strip().splitlines()[-1] == "Loaded image: busybox:latest"
    resolved = call(inst, "image.resolve", {"ref": "busybox", "unpack": False})
    assert resolved["name"] == "docker.io/library/busybox:latest"
    assert resolved["id"] == img.config_digest  # config bytes kept exactly: same id as docker's
    assert resolved["chain_id"] == img.diff_ids[0]
    assert [layer["diff_id"] for layer in resolved["layers"]] == img.diff_ids
    # unpacked right after the load, so a run never waits for it
    assert img.diff_ids[0] in {s["name"] for s in snapshots(inst)}
    listing = inst.cli("images", check=True).stdout.decode()
    assert "busybox" in listing and img.config_digest.split(":")[1][:12] in listing


def test_load_oci_layout_keeps_manifest_digest_and_name(inst: Instance, tmp_path: Path) -> None:
    img = busybox_image("bboci:1")
    archive = tmp_path / "oci.tar"
    mkimage.write_oci_layout([img], str(archive))
    proc = inst.cli("load", "-i", str(archive), check=True)
    assert "Loaded image: bboci:1" in proc.stdout.decode()
    resolved = call(inst, "image.resolve", {"ref": "bboci:1"})
    assert resolved["target"]["digest"] == img.manifest_digest
    assert resolved["manifest_digest"] == img.manifest_digest
    assert resolved["id"] == img.config_digest
    # every blob of the layout is in the store, byte for byte
    assert set(img.blobs) <= blobs(inst)


def test_load_from_stdin_and_unnamed_oci_image_is_dangling(inst: Instance, tmp_path: Path) -> None:
    img = busybox_image("x:1")
    archive = tmp_path / "oci.tar"
    mkimage.write_oci_layout([img], str(archive))
    # strip the names: the image is loaded without a name (docker shows <none>)
    import io
    import tarfile

    out = io.BytesIO()
    with tarfile.open(archive) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src:
            data = src.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if member.name == "index.json":
                index = json.loads(data)  # type: ignore[arg-type]
                for m in index["manifests"]:
                    m.pop("annotations")
                data = json.dumps(index).encode()
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    proc = inst.cli("load", input=out.getvalue(), check=True)
    assert f"Loaded image ID: {img.config_digest}" in proc.stdout.decode()
    listing = inst.cli("images", "--filter", "dangling=true", check=True).stdout.decode().splitlines()
    assert listing[1].split()[:2] == ["<none>", "<none>"]
    assert inst.cli("images", "-q", "--filter", "dangling=false", check=True).stdout.decode().strip() == ""


def test_import_rootfs_with_changes(inst: Instance, tmp_path: Path) -> None:
    rootfs = busybox_rootfs()
    src = tmp_path / "rootfs.tar.gz"
    src.write_bytes(gzip.compress(rootfs))
    proc = inst.cli(
        "import",
        str(src),
        "myimp:1",
        "-c",
        "CMD echo hi",
        "-c",
        'ENV A=b "C=d e"',
        "-c",
        "WORKDIR /tmp",
        "-m",
        "from a test",
        check=True,
    )
    image_id = proc.stdout.decode().strip()
    resolved = call(inst, "image.resolve", {"ref": "myimp:1"})
    assert resolved["id"] == image_id
    config = resolved["config"]
    assert config["rootfs"]["diff_ids"] == [sha256(rootfs)]  # diff ID of the uncompressed tar
    assert config["config"]["Cmd"] == ["/bin/sh", "-c", "echo hi"]
    assert config["config"]["Env"] == ["A=b", "C=d e"]
    assert config["config"]["WorkingDir"] == "/tmp"
    assert config["comment"] == "from a test"
    assert resolved["layers"][0]["media_type"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert sha256(rootfs) in {s["name"] for s in snapshots(inst)}


def test_import_refuses_a_bad_change_and_non_tar_input(inst: Instance, tmp_path: Path) -> None:
    src = tmp_path / "rootfs.tar"
    src.write_bytes(busybox_rootfs())
    proc = inst.cli("import", str(src), "x:1", "-c", "FROM scratch")
    assert proc.returncode != 0
    assert proc.stderr.decode().startswith("error: invalid change 'FROM scratch'")
    bad = tmp_path / "notatar"
    bad.write_bytes(b"hello, this is not a tar archive" * 100)
    proc = inst.cli("import", str(bad), "x:1")
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and "not a tar archive" in err
    assert names(inst) == []
    assert blobs(inst) == set()


def test_malformed_archives_leave_nothing(inst: Instance, tmp_path: Path) -> None:
    img = busybox_image()
    good = tmp_path / "good.tar"
    mkimage.write_oci_layout([img], str(good))
    # a layout whose layer blob does not match its file name
    import io
    import tarfile

    out = io.BytesIO()
    layer_name = "blobs/sha256/" + img.layer_digests[0].split(":")[1]
    with tarfile.open(good) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src:
            data = src.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if member.name == layer_name:
                data = bytes([data[0] ^ 1]) + data[1:]  # type: ignore[index]
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    for payload, expected in (
        (out.getvalue(), "does not match"),
        (b"\0" * 10240, "neither index.json"),
        (b"garbage" * 1000, "tar"),
    ):
        proc = inst.cli("load", input=payload)
        assert proc.returncode != 0
        err = proc.stderr.decode()
        assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    assert names(inst) == []
    call(inst, "image.gc")
    assert blobs(inst) == set()
    assert ingests(inst) == []


def test_rmi_untags_then_deletes_and_collects_content_and_snapshots(inst: Instance, tmp_path: Path) -> None:
    img = busybox_image()
    archive = tmp_path / "busybox.tar"
    mkimage.write_docker_archive([img], str(archive))
    inst.cli("load", "-i", str(archive), check=True)
    inst.cli("tag", "busybox", "other/copy:2", check=True)
    assert names(inst) == ["docker.io/library/busybox:latest", "docker.io/other/copy:2"]
    # by id with two repositories: refused unless forced
    proc = inst.cli("rmi", img.config_digest.split(":")[1][:12])
    assert proc.returncode != 0 and "must be forced" in proc.stderr.decode()
    out = inst.cli("rmi", "busybox", check=True).stdout.decode()
    assert out == "Untagged: busybox:latest\n"
    assert blobs(inst)  # still named as other/copy:2
    out = inst.cli("rmi", "other/copy:2", check=True).stdout.decode()
    assert out == f"Untagged: other/copy:2\nDeleted: {img.config_digest}\n"
    assert names(inst) == []
    assert blobs(inst) == set()
    assert snapshots(inst) == []
    assert snapshot_dirs(inst) == []
    proc = inst.cli("rmi", "busybox")
    assert proc.returncode == 1 and proc.stderr.decode() == "error: image 'busybox' not found\n"


def test_image_events_reach_the_journal_even_when_events_starts_late(instance: Instance, tmp_path: Path) -> None:
    need_root()
    instance.start("snapshot", "image")
    img = busybox_image()
    archive = tmp_path / "busybox.tar"
    mkimage.write_docker_archive([img], str(archive))
    instance.cli("load", "-i", str(archive), check=True)  # events service down: the call still works
    instance.cli("tag", "busybox", "busybox:2", check=True)
    instance.cli("rmi", "busybox:2", check=True)
    instance.start("events")
    import time

    deadline = time.monotonic() + 20
    seen: list[tuple[str, str]] = []
    while time.monotonic() < deadline:
        with instance.client("events", timeout_s=10) as c:
            seen = [
                (e["topic"], e["event"].get("name", ""))
                for e in c.stream("events.replay", {"since": 0, "filters": {"topic": ["/images/"]}}, timeout_s=10)
            ]
        if len(seen) >= 3:
            break
        time.sleep(0.2)
    assert seen == [
        ("/images/create", "docker.io/library/busybox:latest"),
        ("/images/create", "docker.io/library/busybox:2"),
        ("/images/delete", "docker.io/library/busybox:2"),
    ]


def test_resolve_unpacks_what_a_load_could_not(instance: Instance, tmp_path: Path) -> None:
    """The snapshot service is down during the load: the image is recorded; resolve unpacks it later."""
    need_root()
    instance.start("image")
    img = busybox_image()
    archive = tmp_path / "busybox.tar"
    mkimage.write_oci_layout([img], str(archive))
    proc = instance.cli("load", "-i", str(archive), check=True)
    assert "Loaded image: busybox:latest" in proc.stdout.decode()
    instance.start("snapshot")
    assert snapshots(instance) == []
    resolved = call(instance, "image.resolve", {"ref": "busybox"})
    assert resolved["chain_id"] == img.diff_ids[0]
    assert [s["name"] for s in snapshots(instance)] == [img.diff_ids[0]]
    # a second resolve is a cheap stat
    call(instance, "image.resolve", {"ref": "busybox"})
    assert len(snapshots(instance)) == 1


def test_run_unpacks_an_image_whose_layers_are_not_unpacked(instance: Instance, tmp_path: Path) -> None:
    """``run`` of an image loaded while the snapshot service was down: the container's prepare
    finds no parent snapshot, the image service unpacks the layers, the container runs."""
    need_root()
    prepare_runtime(os.environ.get("DOCKYARD_RUNTIME", "runc"))
    instance.start("image")
    img = busybox_image()
    archive = tmp_path / "busybox.tar"
    mkimage.write_oci_layout([img], str(archive))
    instance.cli("load", "-i", str(archive), check=True)
    instance.start("snapshot", "events", "execution")
    assert snapshots(instance) == []
    proc = instance.cli("run", "--rm", "busybox", "echo", "unpacked on demand")
    assert (proc.returncode, proc.stdout) == (0, b"unpacked on demand\n")
    assert [s["name"] for s in snapshots(instance)] == [img.diff_ids[0]]
    assert instance.cli("run", "--rm", "nosuchimage", "true").returncode == 125

"""Pulling from a real registry (Debian's docker-registry on 127.0.0.1, started per module).

Images are pushed with ``skopeo copy`` from OCI archives built by ``deploy/mkimage.py``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy import mkimage
from tests.conftest import need_root
from tests.harness import Instance
from tests.image_util import blobs, busybox_image, call, names, snapshots
from tests.registry import Proxy, Registry, multiarch_layout, self_signed_certificate, skopeo_copy

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """An anonymous plain-HTTP registry holding busybox:latest and a two-platform multi:latest."""
    need_root()
    tmp = tmp_path_factory.mktemp("reg")
    reg = Registry(tmp / "registry")
    reg.start()
    try:
        img = busybox_image()
        archive = tmp / "busybox.tar"
        mkimage.write_oci_layout([img], str(archive))
        skopeo_copy(f"oci-archive:{archive}", f"docker://{reg.host}/busybox:latest")
        other = busybox_image("multi:latest", config={"Labels": {"arch": "other"}})
        cfg = json.loads(other.blobs[other.config_digest])
        cfg["architecture"] = "s390x"
        other = _rebuild_with_config(other, cfg)
        multi = tmp / "multi.tar"
        multiarch_layout(str(multi), busybox_image("multi:latest"), other)
        skopeo_copy(f"oci-archive:{multi}", f"docker://{reg.host}/multi:latest", all_images=True)
        reg.busybox = img  # type: ignore[attr-defined]
        yield reg
    finally:
        reg.stop()


def _rebuild_with_config(img: mkimage.Image, cfg: dict) -> mkimage.Image:
    """The same layers under another config (another architecture)."""
    cfg_bytes = json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()
    out = mkimage.Image(
        img.name, dict(img.blobs), layer_digests=img.layer_digests, diff_ids=img.diff_ids, uncompressed=img.uncompressed
    )
    del out.blobs[img.config_digest]
    del out.blobs[img.manifest_digest]
    out.config_digest = mkimage._sha(cfg_bytes)
    out.blobs[out.config_digest] = cfg_bytes
    man = json.loads(img.blobs[img.manifest_digest])
    man["config"] = {"mediaType": mkimage.MT_CONFIG, "digest": out.config_digest, "size": len(cfg_bytes)}
    man_bytes = json.dumps(man, sort_keys=True, separators=(",", ":")).encode()
    out.manifest_digest = mkimage._sha(man_bytes)
    out.blobs[out.manifest_digest] = man_bytes
    return out


@pytest.fixture
def inst(instance: Instance) -> Instance:
    instance.start("snapshot", "image")
    return instance


def test_pull_from_plain_http_loopback_registry(inst: Instance, registry: Registry) -> None:
    img = registry.busybox  # type: ignore[attr-defined]
    ref = f"{registry.host}/busybox"
    proc = inst.cli("pull", ref, check=True)
    out = proc.stdout.decode()
    short = img.layer_digests[0].split(":")[1][:12]
    assert f"{short}: Pull complete" in out
    assert f"Digest: {img.manifest_digest}" in out
    assert f"Status: Downloaded newer image for {ref}:latest" in out
    assert out.splitlines()[-1] == f"{ref}:latest"
    resolved = call(inst, "image.resolve", {"ref": ref})
    assert resolved["id"] == img.config_digest
    assert resolved["target"]["digest"] == img.manifest_digest
    assert img.diff_ids[0] in {s["name"] for s in snapshots(inst)}
    again = inst.cli("pull", ref, check=True).stdout.decode()
    assert f"{short}: Already exists" in again
    assert f"Status: Image is up to date for {ref}:latest" in again
    inspect = json.loads(inst.cli("image", "inspect", ref, check=True).stdout)
    assert inspect[0]["RepoDigests"] == [f"{ref}@{img.manifest_digest}"]
    assert inspect[0]["RootFS"]["Layers"] == img.diff_ids


def test_pull_by_digest_and_tag_pinned_by_digest(inst: Instance, registry: Registry) -> None:
    img = registry.busybox  # type: ignore[attr-defined]
    ref = f"{registry.host}/busybox@{img.manifest_digest}"
    inst.cli("pull", ref, check=True)
    assert names(inst) == [ref]
    wrong = f"{registry.host}/busybox:latest@sha256:" + "0" * 64
    proc = inst.cli("pull", wrong)
    assert proc.returncode != 0 and "not found" in proc.stderr.decode()


def test_multi_arch_index_picks_the_host_platform(inst: Instance, registry: Registry) -> None:
    host_arch = json.loads(registry.busybox.blobs[registry.busybox.config_digest])["architecture"]  # type: ignore[attr-defined]
    ref = f"{registry.host}/multi:latest"
    inst.cli("pull", ref, check=True)
    resolved = call(inst, "image.resolve", {"ref": ref})
    assert resolved["target"]["media_type"] == "application/vnd.oci.image.index.v1+json"
    assert resolved["config"]["architecture"] == host_arch
    # only the chosen platform's config was fetched
    other = [
        b for b in blobs(inst) if b not in {resolved["id"], resolved["manifest_digest"], resolved["target"]["digest"]}
    ]
    assert other == [resolved["layers"][0]["digest"]]
    # an explicit platform is honoured
    inst.cli("pull", "--platform", "linux/s390x", f"{registry.host}/multi:latest", check=True)
    s390x = call(inst, "image.resolve", {"ref": ref, "platform": "linux/s390x", "unpack": False})
    assert s390x["config"]["architecture"] == "s390x"


def test_no_matching_platform_lists_what_is_available_and_stores_nothing(inst: Instance, registry: Registry) -> None:
    proc = inst.cli("pull", "--platform", "linux/ppc64le", f"{registry.host}/multi:latest")
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert "no matching manifest for linux/ppc64le" in err and "linux/s390x" in err and err.count("\n") == 1
    assert names(inst) == [] and blobs(inst) == set()


def test_unknown_repository_and_tag_are_not_found(inst: Instance, registry: Registry) -> None:
    for ref in (f"{registry.host}/nope", f"{registry.host}/busybox:nope"):
        proc = inst.cli("pull", ref)
        assert proc.returncode == 1
        assert (
            proc.stderr.decode().strip()
            == f"error: manifest for {ref if ':nope' in ref else ref + ':latest'} not found: "
            "manifest unknown: manifest unknown"  # the registry's code and message, as dockerd shows them
        )
        assert "Pulling from" not in proc.stdout.decode()
    proc = inst.cli("pull", "Bad/Name")
    assert proc.returncode == 1 and "invalid reference format" in proc.stderr.decode()


def test_corrupt_blob_fails_the_pull_and_leaves_nothing(inst: Instance, registry: Registry) -> None:
    img = registry.busybox  # type: ignore[attr-defined]
    with Proxy(registry.host) as proxy:
        proxy.corrupt.add(img.layer_digests[0])
        ref = f"{proxy.host}/busybox:latest"
        proc = inst.cli("pull", ref)
        assert proc.returncode != 0
        err = proc.stderr.decode()
        assert err.count("\n") == 1 and "digest mismatch" in err and img.layer_digests[0] in err
        assert names(inst) == []
        assert img.layer_digests[0] not in blobs(inst)
        assert blobs(inst) == set()
        assert snapshots(inst) == []
        # the registry is fine once the proxy behaves: the same pull then works
        proxy.corrupt.clear()
        inst.cli("pull", ref, check=True)
        assert names(inst) == [ref]


def _host_ip() -> str | None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing address
            ip = str(s.getsockname()[0])
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_c29_plain_http_only_for_loopback_and_configured_insecure_registries(
    instance: Instance, tmp_path: Path
) -> None:
    need_root()
    ip = _host_ip()
    if ip is None:
        pytest.skip("no non-loopback address on this host")
    img = busybox_image()
    archive = tmp_path / "bb.tar"
    mkimage.write_oci_layout([img], str(archive))
    with Registry(tmp_path / "reg", ip=ip) as reg:
        skopeo_copy(f"oci-archive:{archive}", f"docker://{reg.host}/busybox:1")
        # not listed: HTTPS only, which a plain-HTTP registry cannot speak
        instance.start("image")
        proc = instance.cli("pull", f"{reg.host}/busybox:1")
        assert proc.returncode == 1
        err = proc.stderr.decode()
        assert reg.host in err and "insecure_registries" in err and err.count("\n") == 1, err
        instance.kill("image")
        # listed as host:port: HTTPS is tried, then plain HTTP
        instance.env["DOCKYARD_INSECURE_REGISTRIES"] = json.dumps([reg.host])
        instance.start("image")
        instance.cli("pull", f"{reg.host}/busybox:1", check=True)
        instance.kill("image")
        # listed without the port: any port of that host
        instance.env["DOCKYARD_INSECURE_REGISTRIES"] = json.dumps([ip])
        instance.start("image")
        instance.cli("rmi", f"{reg.host}/busybox:1", check=True)
        instance.cli("pull", f"{reg.host}/busybox:1", check=True)


def test_registry_mirror_serves_docker_hub_names(instance: Instance, registry: Registry) -> None:
    """``busybox`` means docker.io/library/busybox: with a mirror configured it comes from there."""
    img = registry.busybox  # type: ignore[attr-defined]
    with Proxy(registry.host) as mirror:
        # the mirror holds library/busybox, as a Docker Hub pull-through cache does
        skopeo_copy(f"docker://{registry.host}/busybox:latest", f"docker://{registry.host}/library/busybox:latest")
        instance.env["DOCKYARD_REGISTRY_MIRRORS"] = json.dumps({"docker.io": [f"http://{mirror.host}"]})
        instance.start("snapshot", "image")
        out = instance.cli("pull", "busybox", check=True).stdout.decode()
        assert "Status: Downloaded newer image for busybox:latest" in out
        assert names(instance) == ["docker.io/library/busybox:latest"]
        assert call(instance, "image.resolve", {"ref": "busybox"})["target"]["digest"] == img.manifest_digest
        assert any(p.startswith("/v2/library/busybox/manifests/") for _m, p, _r, _n in mirror.log)


def test_https_registry_is_verified_against_the_system_cas(instance: Instance, tmp_path: Path) -> None:
    """A self-signed HTTPS registry: refused with a clear TLS error; trusted once its CA is
    in the CA bundle the service uses (``SSL_CERT_FILE``, as the system store would be)."""
    need_root()
    ip = _host_ip()
    if ip is None:
        pytest.skip("no non-loopback address on this host")
    cert, key = self_signed_certificate(tmp_path, ip)
    img = busybox_image()
    archive = tmp_path / "bb.tar"
    mkimage.write_oci_layout([img], str(archive))
    with Registry(tmp_path / "reg", ip=ip, tls=(cert, key)) as reg:
        subprocess.run(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--dest-cert-dir",
                str(tmp_path / "none"),
                "--dest-tls-verify=false",
                f"oci-archive:{archive}",
                f"docker://{reg.host}/busybox:1",
            ],
            check=True,
            capture_output=True,
        )
        instance.start("image")
        proc = instance.cli("pull", f"{reg.host}/busybox:1")
        assert proc.returncode == 1
        err = proc.stderr.decode()
        assert "TLS handshake failed" in err and "CERTIFICATE_VERIFY_FAILED" in err and reg.host in err, err
        instance.kill("image")
        instance.env["SSL_CERT_FILE"] = str(cert)
        instance.start("image")
        instance.cli("pull", f"{reg.host}/busybox:1", check=True)
        assert (
            call(instance, "image.resolve", {"ref": f"{reg.host}/busybox:1", "unpack": False})["id"]
            == img.config_digest
        )


def test_c10_layer_with_a_wrong_diff_id_fails_the_pull_and_leaves_nothing(
    inst: Instance, registry: Registry, tmp_path: Path
) -> None:
    img = busybox_image("baddiff:1")
    cfg = json.loads(img.blobs[img.config_digest])
    cfg["rootfs"]["diff_ids"] = ["sha256:" + "0" * 64]
    bad = _rebuild_with_config(img, cfg)
    archive = tmp_path / "bad.tar"
    mkimage.write_oci_layout([bad], str(archive))
    skopeo_copy(f"oci-archive:{archive}", f"docker://{registry.host}/baddiff:1")
    proc = inst.cli("pull", f"{registry.host}/baddiff:1")
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and "diff" in err.lower(), err
    assert names(inst) == []
    assert blobs(inst) == set()
    assert snapshots(inst) == []


def test_pull_through_an_http_proxy_from_the_environment(instance: Instance, registry: Registry) -> None:
    """``HTTP_PROXY`` is honoured for every request, blob bodies included."""
    img = registry.busybox  # type: ignore[attr-defined]
    with Proxy(registry.host) as proxy:  # also speaks absolute-form (forward proxy) requests
        instance.env.update(
            {"HTTP_PROXY": f"http://{proxy.host}", "http_proxy": f"http://{proxy.host}", "NO_PROXY": "", "no_proxy": ""}
        )
        instance.start("image")
        with instance.client("image", timeout_s=60) as c:
            frames = list(c.stream("image.pull", {"ref": f"{registry.host}/busybox", "unpack": False}))
        assert frames[-1]["status"] == "done"
        assert proxy.blob_bytes(img.layer_digests[0]) == len(img.blobs[img.layer_digests[0]])

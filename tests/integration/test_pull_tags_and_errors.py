"""Registry-facing pull parity: ``pull -a`` (every tag, the tag list followed page by page),
the registry's own error for an unknown tag or repository, and ``GET /distribution/{name}/json``.

One ``dockyard up`` instance and one Debian ``docker-registry`` serve the module; images are
pushed with ``skopeo copy``: ``walk/bb`` has tags ``1``, ``2``, ``latest`` (one busybox image)
and ``big`` (the same layer plus one more); ``walk/multi:latest`` is a two-platform index.
Each test pulls through its own name (a ``Proxy`` in front of the registry, or the registry)
and removes what it pulled.
"""

from __future__ import annotations

import hashlib
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from common import errors
from deploy import mkimage
from tests.conftest import need_root
from tests.gateway_util import Engine, docker_py, engine
from tests.image_util import busybox_image, busybox_rootfs, random_layer
from tests.registry import Proxy, Registry, multiarch_layout, skopeo_copy

pytestmark = pytest.mark.root

docker = pytest.importorskip("docker")

TAGS = ["1", "2", "big", "latest"]


@dataclass
class Pushed:
    reg: Registry
    small: mkimage.Image  # walk/bb:1, :2, :latest
    big: mkimage.Image  # walk/bb:big (small's layer + one)
    multi_digest: str  # walk/multi:latest (index)
    other_arch: str
    host_arch: str


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushed]:
    need_root()
    tmp = tmp_path_factory.mktemp("pulltags")
    reg = Registry(tmp / "registry")
    reg.start()
    try:
        small = busybox_image("walk/bb:1")
        big = mkimage.build_image("walk/bb:big", [busybox_rootfs(), random_layer(4096)])
        for img, tags in ((small, ["1", "2", "latest"]), (big, ["big"])):
            archive = tmp / f"{tags[0]}.tar"
            mkimage.write_oci_layout([img], str(archive))
            for tag in tags:
                skopeo_copy(f"oci-archive:{archive}", f"docker://{reg.host}/walk/bb:{tag}")
        host_cfg = json.loads(small.blobs[small.config_digest])
        other = busybox_image("walk/multi:latest", config={"Labels": {"arch": "other"}})
        multi = tmp / "multi.tar"
        other_arch = "s390x" if host_cfg["architecture"] != "s390x" else "arm64"
        multiarch_layout(str(multi), busybox_image("walk/multi:latest"), _with_arch(other, other_arch))
        skopeo_copy(f"oci-archive:{multi}", f"docker://{reg.host}/walk/multi:latest", all_images=True)
        req = urllib.request.Request(
            f"http://{reg.host}/v2/walk/multi/manifests/latest",
            headers={"Accept": "application/vnd.oci.image.index.v1+json"},
        )
        with urllib.request.urlopen(req) as resp:
            multi_digest = "sha256:" + hashlib.sha256(resp.read()).hexdigest()
        yield Pushed(reg, small, big, multi_digest, other_arch, host_cfg["architecture"])
    finally:
        reg.stop()


def _with_arch(img: mkimage.Image, arch: str) -> mkimage.Image:
    """The same layers under a config for another architecture."""
    cfg = json.loads(img.blobs[img.config_digest])
    cfg["architecture"] = arch
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


@pytest.fixture(scope="module")
def eng(pushed: Pushed) -> Iterator[Engine]:
    with engine() as e:
        yield e


@pytest.fixture
def client(eng: Engine) -> Iterator[Any]:
    with docker_py(eng, timeout_s=120) as c:
        yield c


def _tags_of(eng: Engine, repo: str) -> list[str]:
    out = eng.inst.cli("images", "--format", "{{.Repository}}:{{.Tag}}", check=True).stdout.decode()
    return sorted(line.rpartition(":")[2] for line in out.split() if line.rpartition(":")[0] == repo)


def _rmi(eng: Engine, repo: str) -> None:
    for tag in _tags_of(eng, repo):
        eng.inst.cli("rmi", f"{repo}:{tag}", check=True)


def _short(digest: str) -> str:
    return digest.split(":", 1)[1][:12]


def test_cli_pull_all_tags_follows_the_tag_list_pages_and_fetches_a_shared_layer_once(
    eng: Engine, pushed: Pushed
) -> None:
    with Proxy(pushed.reg.host) as proxy:
        proxy.tags_page_size = 2
        repo = f"{proxy.host}/walk/bb"
        try:
            proc = eng.inst.cli("pull", "-a", repo, timeout=120)
            out = proc.stdout.decode()
            assert proc.returncode == 0, proc.stderr.decode()
            lines = out.splitlines()
            pulling = [line for line in lines if "Pulling from" in line]
            assert pulling == [f"{t}: Pulling from walk/bb" for t in TAGS]  # the registry's (paged) order
            assert "Using default tag" not in out
            base, extra = _short(pushed.small.layer_digests[0]), _short(pushed.big.layer_digests[1])
            assert lines.count(f"{base}: Pull complete") == 1 and lines.count(f"{base}: Already exists") == 3
            assert lines.count(f"{extra}: Pull complete") == 1
            assert f"{base}: Extracting" not in lines[lines.index("2: Pulling from walk/bb") :]
            digests = [line for line in lines if line.startswith("Digest: ")]
            assert digests == [f"Digest: {d}" for d in (pushed.small.manifest_digest, pushed.small.manifest_digest)] + [
                f"Digest: {pushed.big.manifest_digest}",
                f"Digest: {pushed.small.manifest_digest}",
            ]
            assert lines[-2:] == [f"Status: Downloaded newer image for {repo}", repo]
            assert _tags_of(eng, repo) == sorted(TAGS)
            # the tag list came in two pages (n=2, then last=2), each layer blob once
            pages = [path for method, path, _r, _n in proxy.log if method == "GET" and "/tags/list" in path]
            assert pages == ["/v2/walk/bb/tags/list", "/v2/walk/bb/tags/list?n=2&last=2"]
            blob_gets = [p for m, p, _r, _n in proxy.log if m == "GET" and p.endswith(pushed.small.layer_digests[0])]
            assert len(blob_gets) == 1
            again = eng.inst.cli("pull", "--all-tags", repo, check=True, timeout=120).stdout.decode()
            assert again.splitlines()[-2:] == [f"Status: Image is up to date for {repo}", repo]
            assert "Pull complete" not in again
        finally:
            _rmi(eng, repo)


def test_pull_all_tags_with_a_tag_or_digest_is_refused(eng: Engine, pushed: Pushed) -> None:
    repo = f"{pushed.reg.host}/walk/bb"
    for ref in (f"{repo}:1", f"{repo}@{pushed.small.manifest_digest}"):
        proc = eng.inst.cli("pull", "-a", ref)
        assert proc.returncode != 0
        assert proc.stderr.decode().strip() == "error: tag can't be used with --all-tags/-a"
    with eng.inst.client("image", timeout_s=30) as c, pytest.raises(errors.InvalidArgument) as info:
        list(c.stream("image.pull", {"ref": f"{repo}:1", "all_tags": True}))
    assert info.value.message == "tag can't be used with --all-tags/-a"
    assert _tags_of(eng, repo) == []


def test_cli_pull_of_an_unknown_tag_or_repository_shows_the_registry_error(eng: Engine, pushed: Pushed) -> None:
    host = pushed.reg.host
    proc = eng.inst.cli("pull", f"{host}/walk/bb:nope", timeout=60)
    assert proc.returncode != 0
    assert "Pulling from" not in proc.stdout.decode()
    assert proc.stderr.decode().strip() == (
        f"error: manifest for {host}/walk/bb:nope not found: manifest unknown: manifest unknown"
    )
    proc = eng.inst.cli("pull", "-a", f"{host}/walk/none", timeout=60)
    assert proc.returncode != 0 and proc.stdout.decode() == ""
    assert proc.stderr.decode().strip() == (
        f"error: repository {host}/walk/none not found: name unknown: repository name not known to registry"
    )
    with eng.inst.client("image", timeout_s=30) as c, pytest.raises(errors.NotFound) as info:
        list(c.stream("image.pull", {"ref": f"{host}/walk/bb:nope"}))
    assert info.value.details["registry_code"] == "MANIFEST_UNKNOWN"
    assert info.value.details["registry_message"] == "manifest unknown"


def test_docker_cli_pull_all_tags_and_unknown_tag(eng: Engine, pushed: Pushed) -> None:
    repo = f"{pushed.reg.host}/walk/bb"
    try:
        out = eng.ok("pull", "-a", repo, timeout=120)
        lines = out.splitlines()
        # the registry's own order (Debian's registry does not sort)
        assert sorted(line.split(":")[0] for line in lines if "Pulling from walk/bb" in line) == sorted(TAGS)
        assert lines[-2:] == [f"Status: Downloaded newer image for {repo}", repo]
        assert sum(1 for line in lines if line.startswith("Digest: sha256:")) == 4
        assert _tags_of(eng, repo) == sorted(TAGS)
    finally:
        _rmi(eng, repo)
    r = eng.docker("pull", f"{repo}:nope", timeout=60)
    assert r.returncode == 1
    assert "Pulling from" not in r.stdout.decode()
    assert r.stderr.decode().strip() == (
        f"Error response from daemon: manifest for {repo}:nope not found: manifest unknown: manifest unknown"
    )
    r = eng.docker("pull", "-a", f"{pushed.reg.host}/walk/none", timeout=60)
    assert r.returncode == 1
    assert r.stderr.decode().strip() == (
        f"Error response from daemon: repository {pushed.reg.host}/walk/none not found: "
        "name unknown: repository name not known to registry"
    )


def test_docker_py_pull_all_tags_returns_every_image_and_errors_surface(
    eng: Engine, pushed: Pushed, client: Any
) -> None:
    repo = f"{pushed.reg.host}/walk/bb"
    try:
        images = client.images.pull(repo, all_tags=True)
        tags = sorted(t for img in images for t in img.tags if t.startswith(repo + ":"))
        assert tags == sorted(f"{repo}:{t}" for t in TAGS)
        assert {img.id for img in images} == {pushed.small.config_digest, pushed.big.config_digest}
    finally:
        _rmi(eng, repo)
    with pytest.raises(docker.errors.NotFound) as info:
        client.images.pull(repo, tag="nope")
    assert info.value.explanation == f"manifest for {repo}:nope not found: manifest unknown: manifest unknown"
    # the raw stream of an all-tags pull of an unknown repository is a 404 before any line
    status, _h, body = eng.api("POST", f"/v1.45/images/create?fromImage={pushed.reg.host}/walk/none")
    assert status == 404
    assert json.loads(body)["message"].startswith(f"repository {pushed.reg.host}/walk/none not found: name unknown")


def test_distribution_inspect_resolves_at_the_registry_without_pulling(
    eng: Engine, pushed: Pushed, client: Any
) -> None:
    host = pushed.reg.host
    data = client.images.get_registry_data(f"{host}/walk/bb:1")
    assert data.id == pushed.small.manifest_digest
    desc = data.attrs["Descriptor"]
    assert desc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert desc["size"] == len(pushed.small.blobs[pushed.small.manifest_digest])
    assert data.attrs["Platforms"] == [{"architecture": pushed.host_arch, "os": "linux"}]
    assert data.has_platform(f"linux/{pushed.host_arch}")

    multi = client.images.get_registry_data(f"{host}/walk/multi")  # no tag: latest
    assert multi.id == pushed.multi_digest
    assert multi.attrs["Descriptor"]["mediaType"] == "application/vnd.oci.image.index.v1+json"
    archs = [(p["os"], p["architecture"]) for p in multi.attrs["Platforms"]]
    assert archs == [("linux", pushed.other_arch), ("linux", pushed.host_arch)]
    assert multi.has_platform(f"linux/{pushed.other_arch}")

    status, _h, body = eng.api("GET", f"/v1.45/distribution/{host}/walk/bb:nope/json")
    assert status == 404
    assert json.loads(body)["message"] == (
        f"manifest for {host}/walk/bb:nope not found: manifest unknown: manifest unknown"
    )
    with pytest.raises(docker.errors.NotFound):
        client.images.get_registry_data(f"{host}/walk/none:1")
    # nothing was pulled
    assert _tags_of(eng, f"{host}/walk/bb") == [] and _tags_of(eng, f"{host}/walk/multi") == []

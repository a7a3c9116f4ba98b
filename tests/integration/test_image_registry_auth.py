"""Pulls from real registries that need credentials: htpasswd Basic auth and token auth.

Debian's docker-registry started by the test (own config file, storage in a temp dir);
token auth is served by ``tests.registry.TokenServer`` (RS256 JWTs signed with openssl).
Credentials go through ``dockyard login`` (checked by the service, stored in the
Docker-format config.json named by ``DOCKYARD_REGISTRY_CONFIG``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy import mkimage
from tests.conftest import need_root
from tests.harness import Instance
from tests.image_util import busybox_image, call, names
from tests.registry import Registry, TokenServer, skopeo_copy

pytestmark = pytest.mark.root

USERS = {"alice": "s3cret pass"}


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, mkimage.Image]:
    img = busybox_image()
    path = tmp_path_factory.mktemp("img") / "busybox.tar"
    mkimage.write_oci_layout([img], str(path))
    return path, img


@pytest.fixture
def inst(instance: Instance, tmp_path: Path) -> Iterator[Instance]:
    need_root()
    config = tmp_path / "docker-config" / "config.json"
    instance.env["DOCKYARD_REGISTRY_CONFIG"] = str(config)
    instance.start("snapshot", "image")
    yield instance


def _login_pull_logout(inst: Instance, host: str, img: mkimage.Image) -> None:
    ref = f"{host}/private/busybox:1"
    proc = inst.cli("pull", ref)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and host in err and "dockyard login" in err, err

    proc = inst.cli("login", host, "-u", "alice", "-p", "wrong")
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and f"registry {host}: authentication failed" in err and "alice" in err, err

    proc = inst.cli("login", host, "-u", "alice", "--password-stdin", input=b"s3cret pass\n", check=True)
    assert proc.stdout.decode().strip() == "Login Succeeded"
    config = json.loads(Path(inst.env["DOCKYARD_REGISTRY_CONFIG"]).read_text())
    assert host in config["auths"]

    inst.cli("pull", ref, check=True)
    assert call(inst, "image.resolve", {"ref": ref})["id"] == img.config_digest

    inst.cli("logout", host, check=True)
    assert host not in json.loads(Path(inst.env["DOCKYARD_REGISTRY_CONFIG"]).read_text())["auths"]
    inst.cli("rmi", ref, check=True)
    proc = inst.cli("pull", ref)
    assert proc.returncode == 1 and host in proc.stderr.decode()
    assert names(inst) == []


def test_pull_from_htpasswd_basic_auth_registry(
    inst: Instance, tmp_path: Path, archive: tuple[Path, mkimage.Image]
) -> None:
    path, img = archive
    with Registry(tmp_path / "reg", htpasswd=USERS) as reg:
        skopeo_copy(f"oci-archive:{path}", f"docker://{reg.host}/private/busybox:1", creds="alice:s3cret pass")
        _login_pull_logout(inst, reg.host, img)


def test_pull_from_token_auth_registry(inst: Instance, tmp_path: Path, archive: tuple[Path, mkimage.Image]) -> None:
    path, img = archive
    token = TokenServer(tmp_path, USERS)
    try:
        with Registry(tmp_path / "reg", token=token) as reg:
            skopeo_copy(f"oci-archive:{path}", f"docker://{reg.host}/private/busybox:1", creds="alice:s3cret pass")
            token.requests.clear()
            _login_pull_logout(inst, reg.host, img)
            # the pull asked for exactly the repository it needed, with alice's credentials
            pulls = [r for r in token.requests if r["scopes"] and r["authorization"].startswith("Basic ")]
            assert pulls and all(r["scopes"] == ["repository:private/busybox:pull"] for r in pulls)
            assert all(r["service"] == [token.service] for r in token.requests)
    finally:
        token.stop()


def test_push_then_pull_through_token_auth(inst: Instance, tmp_path: Path, archive: tuple[Path, mkimage.Image]) -> None:
    path, img = archive
    token = TokenServer(tmp_path, USERS)
    try:
        with Registry(tmp_path / "reg", token=token) as reg:
            inst.cli("load", "-i", str(path), check=True)
            target = f"{reg.host}/team/app:v1"
            inst.cli("tag", "busybox", target, check=True)
            inst.cli("login", reg.host, "-u", "alice", "-p", "s3cret pass", check=True)
            out = inst.cli("push", target, check=True).stdout.decode()
            assert f"v1: digest: {img.manifest_digest}" in out
            again = inst.cli("push", target, check=True).stdout.decode()
            assert "Layer already exists" in again
            inst.cli("rmi", "-f", img.config_digest, check=True)
            assert names(inst) == []
            inst.cli("pull", target, check=True)
            assert call(inst, "image.resolve", {"ref": target})["target"]["digest"] == img.manifest_digest
    finally:
        token.stop()

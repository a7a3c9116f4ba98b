"""Docker parity of volumes and sizes, through the gateway and the real docker CLI (and the
native CLI where it has its own path): regression tests for what a fresh user found.

- ``docker create -v /anon`` (sent as ``Config.Volumes``) and an image's ``Volumes`` make an
  anonymous volume each, unless a mount covers the path (moby ``createContainerOSSpecificSettings``);
  ``rm -v`` / ``--rm`` remove them with the container.
- inspect's ``Mounts`` (docker and dockyard): a volume by its name with its data's host
  directory as Source (moby ``MountPoint``), a bind by its host path.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from typing import Any

from deploy import mkimage
from tests.engine import busybox_layer
from tests.gateway_util import Engine


def _layer(files: dict[str, bytes]) -> bytes:
    """An uncompressed layer tar holding ``files`` (paths without a leading /; parents made)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dirs: set[str] = set()
        for path, data in files.items():
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _load(eng: Engine, name: str, layers: list[bytes], config: dict[str, Any] | None = None) -> None:
    """``docker load`` an image of busybox + ``layers`` with ``config`` merged into its config."""
    img = mkimage.build_image(name, [busybox_layer(), *layers], config=config)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "image.tar")
        mkimage.write_docker_archive([img], path)
        eng.ok("load", "-i", path)


def _inspect(eng: Engine, ref: str) -> dict[str, Any]:
    return json.loads(eng.ok("inspect", ref))[0]  # type: ignore[no-any-return]


def _volumes(eng: Engine) -> set[str]:
    return set(eng.ok("volume", "ls", "-q").split())


# -- 1. Config.Volumes and the image's Volumes --------------------------------------------------------
def test_docker_create_v_anonymous_path_mounts_an_anonymous_volume(eng: Engine) -> None:
    """``docker create -v /anon6`` arrives as ``Config.Volumes`` and was ignored (nothing mounted,
    no volume): Docker makes an anonymous volume for it, and ``rm -v`` removes it."""
    before = _volumes(eng)
    eng.ok("create", "--name", "cv-anon", "-v", "/anon6", "busybox", "sh", "-c", "grep ' /anon6 ' /proc/mounts")
    try:
        info = _inspect(eng, "cv-anon")
        assert info["Config"]["Volumes"] == {"/anon6": {}}
        (mount,) = info["Mounts"]
        assert mount["Type"] == "volume" and mount["Destination"] == "/anon6"
        assert len(mount["Name"]) == 64
        new = _volumes(eng) - before
        assert new == {mount["Name"]}
        vol = json.loads(eng.ok("volume", "inspect", mount["Name"]))[0]
        assert vol["Labels"] == {"com.docker.volume.anonymous": ""}
        assert eng.ok("start", "-a", "cv-anon").strip()  # the volume is mounted at /anon6
    finally:
        eng.ok("rm", "-v", "cv-anon")
    assert _volumes(eng) == before


def test_docker_run_rm_removes_the_config_volumes_volume(eng: Engine) -> None:
    before = _volumes(eng)
    out = eng.ok("run", "--rm", "-v", "/anon7", "busybox", "sh", "-c", "echo hi > /anon7/f && cat /anon7/f")
    assert out == "hi\n"
    assert _volumes(eng) == before


def test_image_volumes_get_anonymous_volumes_filled_from_the_image(eng: Engine) -> None:
    """An image's ``Volumes`` (Dockerfile VOLUME) were not mounted at all: Docker mounts a new
    anonymous volume there, filled with the image's files; a ``-v`` on the same path wins."""
    _load(eng, "withvol:1", [_layer({"data/seed": b"from the image\n"})], {"Volumes": {"/data": {}}})
    before = _volumes(eng)
    eng.ok("create", "--name", "iv", "withvol:1", "sh", "-c", "cat /data/seed; grep -c ' /data ' /proc/mounts")
    try:
        info = _inspect(eng, "iv")
        assert info["Config"]["Volumes"] == {"/data": {}}
        (mount,) = info["Mounts"]
        assert mount["Type"] == "volume" and mount["Destination"] == "/data"
        assert _volumes(eng) - before == {mount["Name"]}
        assert eng.ok("start", "-a", "iv") == "from the image\n1\n"
    finally:
        eng.ok("rm", "-v", "iv")
    assert _volumes(eng) == before
    # a named volume on the image's path replaces the anonymous one (no second volume)
    out = eng.ok("run", "--rm", "-v", "ivnamed:/data", "withvol:1", "cat", "/data/seed")
    assert out == "from the image\n"
    assert _volumes(eng) - before == {"ivnamed"}
    eng.ok("volume", "rm", "ivnamed")


# -- 2. inspect's Mounts --------------------------------------------------------------------------------
def _volume_mountpoint(eng: Engine, name: str) -> str:
    return str(json.loads(eng.ok("volume", "inspect", name))[0]["Mountpoint"])


def test_inspect_mounts_name_a_volume_and_give_its_host_directory(eng: Engine, tmp_path: Any) -> None:
    """Native ``dockyard run -v /anon5`` showed ``Name: "", Source: ""`` and a named volume
    ``Source: "proj_data"``: Docker shows the volume's name and the host directory of its data
    (``docker volume inspect``'s Mountpoint), for ``docker inspect`` and ``dockyard inspect``."""
    inst = eng.inst
    r = inst.cli(
        "run", "-d", "--name", "mp", "-v", "/anon5", "-v", "proj_data:/data", "-v", f"{tmp_path}:/host:ro",
        "busybox", "sleep", "60",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    try:
        for mounts in (
            _inspect(eng, "mp")["Mounts"],
            json.loads(inst.cli("inspect", "mp", check=True).stdout)[0]["Mounts"],
        ):
            by_dest = {m["Destination"]: m for m in mounts}
            assert set(by_dest) == {"/anon5", "/data", "/host"}
            anon = by_dest["/anon5"]
            assert len(anon["Name"]) == 64
            assert anon == {
                "Type": "volume",
                "Name": anon["Name"],
                "Source": _volume_mountpoint(eng, anon["Name"]),
                "Destination": "/anon5",
                "Driver": "local",
                "Mode": "",
                "RW": True,
                "Propagation": "",
            }
            named = by_dest["/data"]
            assert named["Type"] == "volume" and named["Name"] == "proj_data" and named["Driver"] == "local"
            assert named["Source"] == _volume_mountpoint(eng, "proj_data")
            assert os.path.isdir(named["Source"])
            assert by_dest["/host"] == {
                "Type": "bind",
                "Name": "",
                "Source": str(tmp_path),
                "Destination": "/host",
                "Driver": "",
                "Mode": "ro",
                "RW": False,
                "Propagation": "rprivate",
            }
        # docker ps --filter volume= matches a volume by its name, a mount by its destination
        assert eng.ok("ps", "-q", "--filter", f"volume={anon['Name']}").strip()
        assert eng.ok("ps", "-q", "--filter", "volume=proj_data").strip()
        assert eng.ok("ps", "-q", "--filter", "volume=/anon5").strip()
    finally:
        eng.ok("rm", "-f", "-v", "mp")
        eng.ok("volume", "rm", "proj_data")


def test_config_volumes_path_must_be_absolute(eng: Engine) -> None:
    status, _h, body = eng.api("POST", "/containers/create", {"Image": "busybox", "Volumes": {"rel": {}}})
    assert status == 400, body
    assert b"invalid volume path 'rel'" in body
    assert not eng.leftovers()


# -- 3. a bind mount's missing source ------------------------------------------------------------------
_MISSING_ERR = 'invalid mount config for type "bind": bind source path does not exist: '


def test_mount_bind_of_a_missing_source_is_refused_not_created(eng: Engine, tmp_path: Any) -> None:
    """``--mount type=bind,source=/missing`` quietly made the host directory: Docker refuses
    it (400 through the API; the docker and dockyard CLIs print it); ``-v`` still makes it."""
    missing = str(tmp_path / "missing")
    r = eng.docker("run", "--rm", "--mount", f"type=bind,source={missing},target=/x", "busybox", "true")
    assert r.returncode == 125, r.stderr.decode()
    assert _MISSING_ERR + missing in r.stderr.decode()
    status, _h, body = eng.api(
        "POST",
        "/containers/create",
        {"Image": "busybox", "HostConfig": {"Mounts": [{"Type": "bind", "Source": missing, "Target": "/x"}]}},
    )
    assert status == 400 and json.loads(body)["message"] == _MISSING_ERR + missing
    r = eng.inst.cli("run", "--rm", "--mount", f"type=bind,source={missing},target=/x", "busybox", "true")
    assert r.returncode != 0
    assert _MISSING_ERR + missing in r.stderr.decode()
    assert not os.path.exists(missing)
    assert not eng.leftovers()
    # -v makes the missing directory (Docker's -v does), through either CLI
    assert eng.ok("run", "--rm", "-v", f"{missing}:/d", "busybox", "ls", "-d", "/d") == "/d\n"
    assert os.path.isdir(missing)
    other = str(tmp_path / "other")
    assert eng.inst.cli("run", "--rm", "-v", f"{other}:/d", "busybox", "true").returncode == 0
    assert os.path.isdir(other)
    # an existing source mounts as before
    out = eng.ok("run", "--rm", "--mount", f"type=bind,source={missing},target=/x", "busybox", "ls", "-d", "/x")
    assert out == "/x\n"


# -- 4. system df and SizeRw ---------------------------------------------------------------------------
def _df(eng: Engine) -> dict[str, Any]:
    return eng.json("GET", "/system/df")  # type: ignore[no-any-return]


def _image_size(eng: Engine, ref: str) -> int:
    return int(eng.json("GET", f"/images/{ref}/json")["Size"])


def test_system_df_counts_each_layer_once(eng: Engine) -> None:
    """LayersSize was the sum of every image's Size (a shared base counted once per image):
    Docker sums the layer store, each layer once."""
    before = _df(eng)["LayersSize"]
    _load(eng, "sz:1", [_layer({"one": b"1" * 3000})])
    _load(eng, "sz:2", [_layer({"two": b"2" * 5000})])
    try:
        base = _image_size(eng, "busybox")
        own = (_image_size(eng, "sz:1") - base) + (_image_size(eng, "sz:2") - base)
        assert 0 < own < base
        df = _df(eng)
        assert df["LayersSize"] == before + own
        assert df["LayersSize"] < sum(i["Size"] for i in df["Images"])
    finally:
        eng.ok("rmi", "sz:1", "sz:2")


def test_system_df_measures_volumes(eng: Engine) -> None:
    """A volume's UsageData.Size was -1 in /system/df (``docker system df -v`` showed -1B):
    Docker measures its data and counts the containers using it; other endpoints omit it."""
    eng.ok("run", "--name", "dfv", "-v", "dfvol:/d", "busybox", "sh", "-c", "head -c 123000 /dev/zero > /d/f")
    try:
        (vol,) = [v for v in _df(eng)["Volumes"] if v["Name"] == "dfvol"]
        assert vol["UsageData"] == {"RefCount": 1, "Size": 123000}
        line = next(ln for ln in eng.ok("system", "df", "-v").splitlines() if ln.startswith("dfvol "))
        assert line.split()[1:] == ["1", "123kB"]
        assert "UsageData" not in json.loads(eng.ok("volume", "inspect", "dfvol"))[0]
    finally:
        eng.ok("rm", "dfv")
        eng.ok("volume", "rm", "dfvol")


def test_size_rw_counts_the_files_changed_not_directories(eng: Engine) -> None:
    """``docker ps -s`` showed 8.19kB for a container that changed nothing (the blocks of the
    directories made for its mount points): moby's SizeRw is ``directory.Size`` of the rw layer,
    the bytes of its files."""
    eng.ok("run", "--name", "noop", "-v", "/anonx", "-v", "/tmp:/deep/host", "busybox", "true")
    eng.ok("run", "--name", "wrote", "busybox", "sh", "-c", "head -c 5000 /dev/zero > /f; mkdir -p /a/b/c")
    try:
        assert eng.json("GET", "/containers/noop/json?size=1")["SizeRw"] == 0
        assert eng.json("GET", "/containers/wrote/json?size=1")["SizeRw"] == 5000
        out = eng.ok("ps", "-as", "--filter", "name=noop", "--format", "{{.Size}}")
        assert out.startswith("0B (virtual "), out
        sizes = {c["Names"][0]: c["SizeRw"] for c in _df(eng)["Containers"]}
        assert sizes["/noop"] == 0 and sizes["/wrote"] == 5000
    finally:
        eng.ok("rm", "-v", "noop", "wrote")

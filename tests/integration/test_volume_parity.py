"""Docker parity of volumes and sizes, through the gateway and the real docker CLI (and the
native CLI where it has its own path): regression tests for what a fresh user found.

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

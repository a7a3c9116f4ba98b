#!/usr/bin/env python3
"""Build a real busybox image from the host's ``busybox-static`` binary, offline.

Stdlib only, deterministic (fixed mtimes, gzip mtime 0), so the same host binary
always gives the same digests. Outputs:

- ``rootfs``: a plain rootfs tar (for ``dockyard import``);
- ``oci``: an OCI image layout tar (``oci-layout``, ``index.json``, ``blobs/sha256``),
  the index entry annotated ``org.opencontainers.image.ref.name=<tag>`` and
  ``io.containerd.image.name=<name>``;
- ``docker``: a docker-archive tar as ``docker save`` writes it (``manifest.json``,
  ``repositories``, ``<id>/layer.tar``, ``<config>.json``).

Usage::

    python3 deploy/mkimage.py --format docker --name busybox:latest -o busybox.tar

Library use (tests): ``busybox_rootfs_tar()``, ``build_image(layers, ...)``,
``write_oci_layout()``, ``write_docker_archive()``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field

EPOCH = 1704067200  # 2024-01-01T00:00:00Z
CREATED = "2024-01-01T00:00:00Z"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


def find_busybox() -> str:
    """Return the path of a statically linked busybox, or exit with a hint."""
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(path):
            out = (
                subprocess.run(["file", "-L", path], capture_output=True, text=True).stdout
                if shutil.which("file")
                else ""
            )
            if "dynamically linked" in out:
                continue
            return path
    sys.exit("error: no static busybox found; install it with: apt-get install -y busybox-static")


def _add(
    tar: tarfile.TarFile,
    name: str,
    *,
    data: bytes | None = None,
    mode: int = 0o644,
    kind: bytes = tarfile.REGTYPE,
    link: str = "",
    uid: int = 0,
    gid: int = 0,
) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = EPOCH
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    info.type = kind
    info.linkname = link
    if data is not None:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def busybox_rootfs_tar(busybox: str | None = None) -> bytes:
    """Return an uncompressed tar of a minimal busybox rootfs.

    ``/bin/busybox``, a relative symlink ``bin/<applet> -> busybox`` per applet (the
    host's ``--install -s`` would point at host paths), ``/etc/{passwd,group,hostname}``
    (root, daemon, nobody, user 1000), ``/tmp`` 1777, ``/root`` 0700, ``/home/user``.
    """
    busybox = busybox or find_busybox()
    applets = sorted(
        set(subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split())
    )
    with open(busybox, "rb") as f:
        binary = f.read()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d, mode in (
            ("bin", 0o755),
            ("dev", 0o755),
            ("etc", 0o755),
            ("home", 0o755),
            ("proc", 0o755),
            ("root", 0o700),
            ("sys", 0o755),
            ("tmp", 0o1777),
            ("usr", 0o755),
            ("usr/bin", 0o755),
            ("var", 0o755),
        ):
            _add(tar, d, mode=mode, kind=tarfile.DIRTYPE)
        _add(tar, "home/user", mode=0o755, kind=tarfile.DIRTYPE, uid=1000, gid=1000)
        _add(tar, "bin/busybox", data=binary, mode=0o755)
        for applet in applets:
            if applet != "busybox":
                _add(tar, f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox", mode=0o777)
        _add(
            tar,
            "etc/passwd",
            data=b"root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
            b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
        )
        _add(tar, "etc/group", data=b"root:x:0:\ndaemon:x:1:\nnogroup:x:65534:\nuser:x:1000:\n")
        _add(tar, "etc/hostname", data=b"busybox\n")
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Image:
    """A built image: blobs by digest plus the manifest/config digests."""

    name: str
    blobs: dict[str, bytes] = field(default_factory=dict)
    manifest_digest: str = ""
    config_digest: str = ""
    layer_digests: list[str] = field(default_factory=list)
    diff_ids: list[str] = field(default_factory=list)
    uncompressed: list[bytes] = field(default_factory=list)


def build_image(name: str, layers: list[bytes], *, config: dict | None = None, compress: bool = True) -> Image:
    """Build an OCI image from uncompressed layer tars (lowest first).

    ``config`` is merged into the image config's ``config`` section (Env defaults to
    PATH, Cmd to ``["sh"]``).
    """
    img = Image(name)
    descs = []
    for raw in layers:
        blob = gzip.compress(raw, mtime=0) if compress else raw
        digest = _sha(blob)
        img.blobs[digest] = blob
        img.layer_digests.append(digest)
        img.diff_ids.append(_sha(raw))
        img.uncompressed.append(raw)
        descs.append({"mediaType": MT_LAYER_GZIP if compress else MT_LAYER_TAR, "digest": digest, "size": len(blob)})
    cfg_section = {"Env": [PATH_ENV], "Cmd": ["sh"], "WorkingDir": "/"}
    cfg_section.update(config or {})
    cfg = {
        "created": CREATED,
        "architecture": "amd64" if os.uname().machine == "x86_64" else os.uname().machine,
        "os": "linux",
        "config": cfg_section,
        "rootfs": {"type": "layers", "diff_ids": img.diff_ids},
        "history": [{"created": CREATED, "created_by": "deploy/mkimage.py"} for _ in layers],
    }
    if os.uname().machine == "aarch64":
        cfg["architecture"] = "arm64"
    cfg_bytes = json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()
    img.config_digest = _sha(cfg_bytes)
    img.blobs[img.config_digest] = cfg_bytes
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": img.config_digest, "size": len(cfg_bytes)},
        "layers": descs,
    }
    man_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    img.manifest_digest = _sha(man_bytes)
    img.blobs[img.manifest_digest] = man_bytes
    return img


def _full_name(name: str) -> tuple[str, str]:
    """Return (docker.io-qualified name, short repo:tag) for a simple ``repo[:tag]``."""
    repo, _, tag = name.partition(":")
    tag = tag or "latest"
    full = (
        repo
        if ("/" in repo and ("." in repo.split("/")[0] or ":" in repo.split("/")[0]))
        else (f"docker.io/{repo}" if "/" in repo else f"docker.io/library/{repo}")
    )
    return f"{full}:{tag}", f"{repo}:{tag}"


def write_oci_layout(images: list[Image], out: str) -> None:
    """Write ``images`` as one OCI image layout tar at ``out``."""
    manifests = []
    blobs: dict[str, bytes] = {}
    for img in images:
        blobs.update(img.blobs)
        full, short = _full_name(img.name)
        manifests.append(
            {
                "mediaType": MT_MANIFEST,
                "digest": img.manifest_digest,
                "size": len(img.blobs[img.manifest_digest]),
                "annotations": {
                    "io.containerd.image.name": full,
                    "org.opencontainers.image.ref.name": short.split(":")[1],
                },
            }
        )
    index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests}
    with tarfile.open(out, "w") as tar:
        _add(tar, "oci-layout", data=b'{"imageLayoutVersion":"1.0.0"}')
        _add(tar, "index.json", data=json.dumps(index, sort_keys=True).encode())
        _add(tar, "blobs", kind=tarfile.DIRTYPE, mode=0o755)
        _add(tar, "blobs/sha256", kind=tarfile.DIRTYPE, mode=0o755)
        for digest in sorted(blobs):
            _add(tar, "blobs/sha256/" + digest.split(":", 1)[1], data=blobs[digest])


def write_docker_archive(images: list[Image], out: str) -> None:
    """Write ``images`` as one docker-archive tar (``docker save`` format) at ``out``."""
    manifest = []
    repositories: dict[str, dict[str, str]] = {}
    with tarfile.open(out, "w") as tar:
        written: set[str] = set()
        for img in images:
            _full, short = _full_name(img.name)
            repo, tag = short.rsplit(":", 1)
            cfg_hex = img.config_digest.split(":", 1)[1]
            if cfg_hex + ".json" not in written:
                _add(tar, cfg_hex + ".json", data=img.blobs[img.config_digest])
                written.add(cfg_hex + ".json")
            layer_paths = []
            for raw, diff_id in zip(img.uncompressed, img.diff_ids, strict=True):
                layer_dir = diff_id.split(":", 1)[1]
                path = f"{layer_dir}/layer.tar"
                if path not in written:
                    _add(tar, layer_dir, kind=tarfile.DIRTYPE, mode=0o755)
                    _add(tar, path, data=raw)
                    _add(tar, f"{layer_dir}/VERSION", data=b"1.0")
                    _add(tar, f"{layer_dir}/json", data=json.dumps({"id": layer_dir}).encode())
                    written.add(path)
                layer_paths.append(path)
            manifest.append({"Config": cfg_hex + ".json", "RepoTags": [short], "Layers": layer_paths})
            repositories.setdefault(repo, {})[tag] = img.diff_ids[-1].split(":", 1)[1]
        _add(tar, "manifest.json", data=json.dumps(manifest).encode())
        _add(tar, "repositories", data=json.dumps(repositories).encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", choices=("rootfs", "oci", "docker"), default="docker")
    parser.add_argument("--name", default="busybox:latest", help="repo[:tag] recorded in the archive")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    rootfs = busybox_rootfs_tar()
    if args.format == "rootfs":
        with open(args.output, "wb") as f:
            f.write(rootfs)
    else:
        img = build_image(args.name, [rootfs])
        (write_oci_layout if args.format == "oci" else write_docker_archive)([img], args.output)
    print(args.output)


if __name__ == "__main__":
    main()

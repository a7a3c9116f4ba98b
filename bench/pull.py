"""bench/pull: pull a 100 MB+ multi-layer image from a local registry, against ``skopeo copy``.

Builds (once, cached under ``bench/results/cache``) a real multi-layer image from host
directories (busybox rootfs plus slices of ``/usr/lib/x86_64-linux-gnu`` and
``/usr/lib/python3*``, gzip level 6 like ``docker push``), pushes it to a private
docker-registry on 127.0.0.1 with skopeo, then alternates, ``--runs`` times each, cold:

- ``dockyard pull`` (the CLI, end to end, including unpack into overlayfs snapshots);
- ``image.pull`` with ``unpack=False`` over RPC: download + verify + store only;
- ``skopeo copy docker://... oci:<fresh dir>``: skopeo's download + verify + store.

Each of our runs starts from an empty content store and snapshot store (a fresh
instance). Prints the medians and the ratio ours/skopeo for the like-for-like pair
(download+store); ``--json`` prints the numbers as JSON too.

Usage: ``python -m bench.pull [--runs 3] [--size-mb 140]``
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from deploy import mkimage
from tests.harness import Instance
from tests.registry import Registry

CACHE = Path(__file__).resolve().parent / "results" / "cache"
EPOCH = 1704067200


def _files(roots: list[str]) -> list[str]:
    out = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    out.append(path)
    return out


def _layer_tar(paths: list[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for path in paths:
            rel = path.lstrip("/")
            parent = os.path.dirname(rel)
            parts = parent.split("/")
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d and d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
                    tar.addfile(info)
            info = tarfile.TarInfo(rel)
            info.size = os.path.getsize(path)
            info.mode, info.mtime = 0o644, EPOCH
            with open(path, "rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


def _compress(raw: bytes) -> bytes:
    return gzip.compress(raw, compresslevel=6, mtime=0)


def build(size_mb: int) -> Path:
    """Build (or reuse) the OCI layout directory of the bench image; return its path."""
    layout = CACHE / f"image-{size_mb}"
    if (layout / "index.json").exists():
        return layout
    files = _files(
        ["/usr/lib/x86_64-linux-gnu", "/usr/lib/python3", *sorted(str(p) for p in Path("/usr/lib").glob("python3.*"))]
    )
    target_raw = size_mb * 1024 * 1024 * 5 // 2  # shared libraries compress to about 40 %
    slices: list[list[str]] = [[]]
    per_layer = target_raw // 4
    used = total = 0
    for path in files:
        size = os.path.getsize(path)
        if total + size > target_raw:
            break
        if used + size > per_layer and len(slices) < 4:
            slices.append([])
            used = 0
        slices[-1].append(path)
        used += size
        total += size
    raws = [mkimage.busybox_rootfs_tar()] + [_layer_tar(s) for s in slices if s]
    with ProcessPoolExecutor(max_workers=2) as pool:
        blobs = list(pool.map(_compress, raws))
    img = mkimage.build_image("bench:1", raws, compress=False)
    # replace the uncompressed layers by their gzip blobs (build_image computed diff IDs on raws)
    manifest = json.loads(img.blobs[img.manifest_digest])
    for i, (raw_digest, blob) in enumerate(zip(img.layer_digests, blobs, strict=True)):
        del img.blobs[raw_digest]
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        img.blobs[digest] = blob
        manifest["layers"][i] = {"mediaType": mkimage.MT_LAYER_GZIP, "digest": digest, "size": len(blob)}
    del img.blobs[img.manifest_digest]
    man_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    img.manifest_digest = "sha256:" + hashlib.sha256(man_bytes).hexdigest()
    img.blobs[img.manifest_digest] = man_bytes
    tmp = layout.with_name(layout.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "blobs" / "sha256").mkdir(parents=True)
    for digest, data in img.blobs.items():
        (tmp / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
    (tmp / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {
        "schemaVersion": 2,
        "mediaType": mkimage.MT_INDEX,
        "manifests": [
            {
                "mediaType": mkimage.MT_MANIFEST,
                "digest": img.manifest_digest,
                "size": len(man_bytes),
                "annotations": {"org.opencontainers.image.ref.name": "bench"},
            }
        ],
    }
    (tmp / "index.json").write_text(json.dumps(index))
    shutil.rmtree(layout, ignore_errors=True)
    tmp.rename(layout)
    return layout


def _image_bytes(layout: Path) -> tuple[int, int]:
    index = json.loads((layout / "index.json").read_text())
    man = json.loads((layout / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    return len(man["layers"]), sum(layer["size"] for layer in man["layers"]) + man["config"]["size"]


def _ours_cli(ref: str) -> float:
    inst = Instance()
    try:
        inst.start("snapshot", "image")
        t = time.monotonic()
        inst.cli("pull", ref, check=True, timeout=600)
        return time.monotonic() - t
    finally:
        inst.cleanup()


def _ours_rpc(ref: str) -> float:
    inst = Instance()
    try:
        inst.start("image")
        t = time.monotonic()
        try:
            with inst.client("image", timeout_s=None) as c:
                frames = list(c.stream("image.pull", {"ref": ref, "unpack": False}))
        except Exception:
            sys.stderr.write(f"image service log:\n{inst.log_tail('image', 40)}\n")
            raise
        elapsed = time.monotonic() - t
        if frames[-1].get("status") != "done":
            raise RuntimeError(f"pull failed: {frames[-1]}")
        return elapsed
    finally:
        inst.cleanup()


def _skopeo(ref: str) -> float:
    dest = Path(tempfile.mkdtemp(prefix="bench-skopeo-"))
    try:
        t = time.monotonic()
        subprocess.run(
            ["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}", f"oci:{dest}:bench"],
            check=True,
            capture_output=True,
        )
        return time.monotonic() - t
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mb", type=int, default=140, help="approximate compressed size of the image")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    t = time.monotonic()
    layout = build(args.size_mb)
    n_layers, size = _image_bytes(layout)
    sys.stderr.write(
        f"image: {n_layers} layers, {size / 1e6:.1f} MB compressed (built in {time.monotonic() - t:.1f}s)\n"
    )
    times: dict[str, list[float]] = {
        "dockyard pull (CLI, with unpack)": [],
        "image.pull (download+store)": [],
        "skopeo copy (download+store)": [],
    }
    with Registry() as reg:
        ref = f"{reg.host}/bench:1"
        subprocess.run(
            ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:bench", f"docker://{ref}"],
            check=True,
            capture_output=True,
        )
        for _ in range(args.runs):
            times["skopeo copy (download+store)"].append(_skopeo(ref))
            times["image.pull (download+store)"].append(_ours_rpc(ref))
            times["dockyard pull (CLI, with unpack)"].append(_ours_cli(ref))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["image.pull (download+store)"] / med["skopeo copy (download+store)"]
    print(f"bench/pull: {n_layers} layers, {size / 1e6:.1f} MB, {args.runs} cold runs each (median, best)")
    for name, values in times.items():
        print(f"  {name:<36} {med[name]:6.2f}s  (best {min(values):.2f}s)  {size / 1e6 / med[name]:6.1f} MB/s")
    verdict = "no slower" if ratio <= 1 else "slower"
    print(f"  ratio dockyard/skopeo (download+store): {ratio:.2f}  ({verdict} than skopeo)")
    if args.json:
        print(json.dumps({"layers": n_layers, "bytes": size, "runs": times, "median_s": med, "ratio": ratio}))


if __name__ == "__main__":
    main()

"""bench/unpack: unpacking a 100 MB+ gzip layer, Dockyard's applier against ``tar -xzf``.

Builds (once, cached under ``--cache``) a realistic layer: regular files, symlinks and
directories taken from the host's ``/usr`` in a fixed order until ``--mb`` MiB of
uncompressed data, as a PAX tar compressed with gzip -6 (the default of Docker and
BuildKit). Then, ``--runs`` times, alternating, into fresh directories on the same
file system:

- ``tar``: ``tar -xzf <blob> -C <dir>`` (GNU tar with a gzip child process), then syncfs;
- ``dockyard``: ``services.snapshot.apply.apply_layer`` (decompress, hash the diff ID,
  apply with in-root resolution, syncfs at the end), as ``snapshot.unpack`` runs it.

Prints the best and median wall time of each, the median CPU time (user + system),
the throughput in MB/s of compressed blob and of uncompressed tar, and the ratio
dockyard/tar (goal: at most 1.3). ``--json``
prints the figures as JSON too. Needs root (owners are restored).

Usage: ``python -m bench.unpack [--mb 320] [--runs 3] [--cache /var/tmp/dockyard-bench-unpack]``
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import resource
import stat
import statistics
import subprocess
import sys
import tempfile
import time

from services.snapshot import apply, fsutil, tarstream

MT_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _sources(limit: int) -> list[tuple[str, os.stat_result]]:
    """Host files under /usr in a fixed order, until ``limit`` bytes of regular files."""
    picked: list[tuple[str, os.stat_result]] = []
    total = 0
    for top in ("/usr/share", "/usr/lib", "/usr/bin", "/usr/sbin", "/usr/include"):
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            try:
                picked.append((dirpath, os.lstat(dirpath)))
            except OSError:
                continue
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and os.access(path, os.R_OK):
                    if st.st_size > 8 << 20:  # a realistic mix: no huge debug files
                        continue
                    picked.append((path, st))
                    total += st.st_size
                elif stat.S_ISLNK(st.st_mode):
                    picked.append((path, st))
                if total >= limit:
                    return picked
    return picked


def build_layer(mb: int, cache: str) -> tuple[str, str, int]:
    """Return ``(blob path, diff ID, uncompressed size)``, building the blob if needed."""
    os.makedirs(cache, exist_ok=True)
    blob = os.path.join(cache, f"layer-{mb}mb.tar.gz")
    meta = blob + ".json"
    if os.path.exists(blob) and os.path.exists(meta):
        with open(meta) as f:
            info = json.load(f)
        return blob, info["diff_id"], info["size"]
    sha = hashlib.sha256()
    size = 0
    tmp = blob + ".tmp"
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:

        class _Out:
            def write(self, data: bytes) -> None:
                nonlocal size
                sha.update(data)
                size += len(data)
                gz.write(data)

        writer = tarstream.TarWriter(_Out())  # type: ignore[arg-type]
        for path, st in _sources(mb << 20):
            name = os.fsencode(path.lstrip("/"))
            common = {"mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid, "mtime": int(st.st_mtime)}
            if stat.S_ISDIR(st.st_mode):
                writer.add(name + b"/", tarstream.DIRECTORY, **common)  # type: ignore[arg-type]
            elif stat.S_ISLNK(st.st_mode):
                writer.add(name, tarstream.SYMLINK, linkname=os.fsencode(os.readlink(path)), **common)  # type: ignore[arg-type]
            else:
                with open(path, "rb") as f:
                    data = f.read()
                writer.add(name, tarstream.REGULAR, size=len(data), **common)  # type: ignore[arg-type]
                writer.write_data(data)
                writer.end_data(len(data))
        writer.close()
    os.replace(tmp, blob)
    with open(meta, "w") as f:
        json.dump({"diff_id": "sha256:" + sha.hexdigest(), "size": size}, f)
    return blob, "sha256:" + sha.hexdigest(), size


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _run_tar(blob: str, target: str) -> tuple[float, float]:
    """Wall and CPU seconds (tar and its gzip child) of ``tar -xzf``, syncfs included."""
    cpu = _cpu(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(["tar", "-xzf", blob, "-C", target], check=True)
    fsutil.syncfs(target)
    return time.perf_counter() - started, _cpu(resource.RUSAGE_CHILDREN) - cpu


def _run_dockyard(blob: str, target: str, diff_id: str) -> tuple[float, float]:
    """Wall and CPU seconds (all threads) of ``apply_layer``, diff ID check and syncfs included."""
    cpu = _cpu(resource.RUSAGE_SELF)
    started = time.perf_counter()
    result = apply.apply_layer(blob, MT_GZIP, "sha256:bench", target)
    elapsed = time.perf_counter() - started
    if result.diff_id != diff_id:
        sys.exit(f"error: diff ID mismatch: {result.diff_id} != {diff_id}")
    return elapsed, _cpu(resource.RUSAGE_SELF) - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=320, help="uncompressed MiB of file data in the layer")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache", default="/var/tmp/dockyard-bench-unpack")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("error: run as root (the applier restores owners)")

    blob, diff_id, size = build_layer(args.mb, args.cache)
    blob_size = os.path.getsize(blob)
    times: dict[str, list[float]] = {"tar": [], "dockyard": []}
    cpu: dict[str, list[float]] = {"tar": [], "dockyard": []}
    work = tempfile.mkdtemp(prefix="unpack-", dir=args.cache)
    try:
        for i in range(args.runs):
            for name in ("tar", "dockyard") if i % 2 == 0 else ("dockyard", "tar"):
                target = os.path.join(work, f"{name}-{i}")
                os.mkdir(target)
                fsutil.syncfs(work)
                if name == "tar":
                    wall, used = _run_tar(blob, target)
                else:
                    wall, used = _run_dockyard(blob, target, diff_id)
                times[name].append(wall)
                cpu[name].append(used)
                # trees are removed only at the end: ext4 makes inode allocation slow for a
                # while after many deletions (recently_deleted()), which would skew the next run
    finally:
        fsutil.remove_tree(work)

    mb = 1e6
    figures = {
        "blob_bytes": blob_size,
        "uncompressed_bytes": size,
        "runs": args.runs,
    }
    rows = []
    for name in ("tar", "dockyard"):
        best, median = min(times[name]), statistics.median(times[name])
        figures[name] = {
            "best_s": round(best, 3),
            "median_s": round(median, 3),
            "blob_mb_s": round(blob_size / mb / best, 1),
            "tar_mb_s": round(size / mb / best, 1),
            "cpu_s_median": round(statistics.median(cpu[name]), 2),
            "all_s": [round(t, 2) for t in times[name]],
        }
        rows.append(
            (
                name,
                f"{best:.2f}",
                f"{median:.2f}",
                f"{blob_size / mb / best:.1f}",
                f"{size / mb / best:.1f}",
                f"{statistics.median(cpu[name]):.2f}",
            )
        )
    ratio = min(times["dockyard"]) / min(times["tar"])
    figures["ratio_best"] = round(ratio, 2)
    figures["ratio_median"] = round(statistics.median(times["dockyard"]) / statistics.median(times["tar"]), 2)
    out = sys.stdout
    out.write(f"layer: {blob_size / mb:.1f} MB gzip, {size / mb:.1f} MB tar ({blob})\n")
    out.write(f"{'':10}{'best s':>8}{'median s':>10}{'blob MB/s':>11}{'tar MB/s':>10}{'CPU s':>8}\n")
    for row in rows:
        out.write(f"{row[0]:10}{row[1]:>8}{row[2]:>10}{row[3]:>11}{row[4]:>10}{row[5]:>8}\n")
    out.write(f"dockyard/tar: {ratio:.2f}x (best), {figures['ratio_median']:.2f}x (median); goal <= 1.3x\n")
    if args.json:
        out.write(json.dumps(figures) + "\n")


if __name__ == "__main__":
    main()

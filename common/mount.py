"""Mounting what a snapshotter returns (``common.api.snapshot.Mount``) and unmounting it.

``mount_all(mounts, target)`` performs each mount with the host's ``mount(8)``, as
containerd's ``mount.All`` does with mount(2). mount(2) takes all options in one page
(4 KiB), so an overlay with a long ``lowerdir`` chain (e.g. 120 layers under a long
root) would fail: when the option string is too long, the mount runs with its
working directory at the common parent of the layer directories and relative paths
in ``lowerdir``/``upperdir``/``workdir`` (containerd's ``compactLowerdirOption``, and
Docker's short ``l/`` links, solve the same limit).
``unmount(target)`` unmounts (lazily if busy). Both raise ``OSError`` with mount's message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

PAGE_LIMIT = 4096 - 512
"""Longest option string passed as is (containerd keeps the same margin)."""


VOLATILE_MARKER = ("work", "incompat", "volatile")
"""Where overlayfs leaves its mark of a ``volatile`` mount, under the mount's ``workdir``."""


def volatile_supported(release: str | None = None) -> bool:
    """Whether this kernel's overlayfs takes the ``volatile`` option (Linux 5.10 and later).

    ``release`` is a ``uname -r`` string (this kernel's by default)."""
    parts = (release or os.uname().release).split(".")
    try:
        major, minor = int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except (IndexError, ValueError):
        return False
    return (major, minor) >= (5, 10)


def with_volatile(mounts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``mounts`` (dicts of ``common.api.snapshot.Mount``) with ``volatile`` added to each
    writable overlay (one with an ``upperdir``); the others unchanged.

    A volatile overlay ignores ``fsync``/``syncfs`` and does not sync its upper file system
    when it is unmounted (Documentation/filesystems/overlayfs.rst, "Volatile mount"):
    without it, the unmount at a container's exit waits for a ``syncfs`` of the whole
    file system under the snapshots, whatever else has dirty pages there. Its contents
    may not survive a crash of the host, so it is only for containers that do not outlive
    their process (``run --rm``, as Podman does since 3.2 and CRI-O for all containers).
    """
    out = []
    for m in mounts:
        options = list(m.get("options") or [])
        if m.get("type") == "overlay" and any(o.startswith("upperdir=") for o in options) and "volatile" not in options:
            m = {**m, "options": [*options, "volatile"]}
        out.append(dict(m))
    return out


def clear_volatile_marker(options: Sequence[str]) -> None:
    """Before a ``volatile`` overlay is mounted: remove the mark an earlier volatile mount of
    the same ``workdir`` left (``<workdir>/work/incompat/volatile``).

    overlayfs refuses to mount a workdir with that mark (``EINVAL``), which is how it
    protects an upper directory that may be inconsistent after a crash. A volatile mount
    is only used for contents thrown away with their container, so mounting them again
    (``restart``, ``cp`` or ``export`` after the exit) is what we want. Options without
    ``volatile`` are left alone: a mark there means a volatile mount is still in use.
    """
    if "volatile" not in options:
        return
    for opt in options:
        if opt.startswith("workdir="):
            marker = os.path.join(opt[len("workdir=") :], *VOLATILE_MARKER)
            try:
                os.rmdir(marker)
            except FileNotFoundError:
                pass
            except OSError:
                shutil.rmtree(marker, ignore_errors=True)


def _opt(mount: Any, attr: str) -> Any:
    return mount[attr] if isinstance(mount, dict) else getattr(mount, attr)


def _common_dir(paths: list[str]) -> str:
    common = os.path.commonpath(paths)
    return common if all(p != common for p in paths) else os.path.dirname(common)


def compact_options(options: Sequence[str]) -> tuple[str | None, list[str]]:
    """Return ``(cwd, options)``: ``options`` unchanged with ``cwd=None`` when they fit in
    a page, else rewritten with paths relative to ``cwd`` (their common parent)."""
    if len(",".join(options)) < PAGE_LIMIT:
        return None, list(options)
    keys = ("lowerdir=", "upperdir=", "workdir=")
    paths = []
    for opt in options:
        for key in keys:
            if opt.startswith(key):
                paths.extend(opt[len(key) :].split(":"))
    if not paths:
        return None, list(options)
    cwd = _common_dir(paths)
    out = []
    for opt in options:
        for key in keys:
            if opt.startswith(key):
                rel = [os.path.relpath(p, cwd) for p in opt[len(key) :].split(":")]
                opt = key + ":".join(rel)
                break
        out.append(opt)
    return cwd, out


def mount_all(mounts: Sequence[Any], target: str) -> None:
    """Mount each of ``mounts`` (models or dicts ``{type, source, target, options}``) on
    ``target`` (``target`` joined with a mount's own sub-path). On failure the mounts
    already made are undone and ``OSError`` is raised."""
    done: list[str] = []
    try:
        for m in mounts:
            sub = _opt(m, "target") or ""
            point = os.path.join(target, sub.lstrip("/")) if sub else target
            options = list(_opt(m, "options") or [])
            mtype = _opt(m, "type")
            clear_volatile_marker(options)
            cwd, options = compact_options(options)
            args = ["mount", "-t", mtype] if mtype != "bind" else ["mount"]
            bind = [o for o in options if o in ("bind", "rbind")]
            rest = [o for o in options if o not in ("bind", "rbind")]
            if mtype == "bind" and not bind:
                bind = ["bind"]
            if bind:
                args.append("--rbind" if "rbind" in bind else "--bind")
            if rest:
                args += ["-o", ",".join(rest)]
            args += [_opt(m, "source"), point]
            proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise OSError(f"mount {mtype} on {point} failed: {proc.stderr.strip() or proc.returncode}")
            done.append(point)
            if bind and "ro" in rest:
                # a bind mount ignores "ro" until remounted
                proc = subprocess.run(["mount", "-o", "remount,bind,ro", point], capture_output=True, text=True)
                if proc.returncode != 0:
                    raise OSError(f"remount read-only of {point} failed: {proc.stderr.strip()}")
    except BaseException:
        for point in reversed(done):
            unmount(point)
        raise


def unmount(target: str) -> None:
    """Unmount ``target`` (and what is mounted below it); lazily if it is busy."""
    proc = subprocess.run(["umount", "-R", target], capture_output=True, text=True)
    if proc.returncode != 0:
        proc = subprocess.run(["umount", "-R", "-l", target], capture_output=True, text=True)
        if proc.returncode != 0 and "not mounted" not in proc.stderr:
            raise OSError(f"umount {target} failed: {proc.stderr.strip()}")

"""Safe path resolution inside a snapshot, over a stack of layer directories.

A ``Tree`` is what a layer is applied to: a writable *upper* directory and, for an
overlay snapshot, its read-only parent layers (nearest first), seen as the one tree
the container will see: overlayfs rules, i.e. a character device 0/0 is a whiteout,
``trusted.overlay.opaque=y`` stops the merge with lower directories, a non-directory
hides everything below it. With no lower layers (first layer, native snapshotter) it
is simply the upper directory.

Resolution has chroot semantics and is done by us, one component at a time, from
directory file descriptors opened with ``O_NOFOLLOW``: the kernel never follows a
symbolic link for us. A symlink met on the way is read and its target resolved again
from the tree's root (absolute targets) or from the directory holding it; ``..``
never climbs above the root. This is the fd-based equivalent of
``openat2(RESOLVE_IN_ROOT)`` extended to a union of directories, so a link planted by
a layer (or by a lower layer) can never make a write land outside the upper directory.

Paths are tuples of ``bytes`` components; a *canonical* path has no symlink, ``.``
or ``..`` in it and names a directory in the merged tree.
"""

from __future__ import annotations

import contextlib
import os
import stat

from services.snapshot import fsutil

Path = tuple[bytes, ...]

MAX_SYMLINKS = 40
"""Symlinks followed while resolving one path before giving up (Linux's limit)."""


class PathError(Exception):
    """A path cannot be resolved as asked (missing, not a directory, a loop, escaping)."""


def clean(name: bytes, *, what: str = "entry") -> Path:
    """Split a tar entry name into components, lexically (``/``, ``.``, ``..``).

    Leading ``/`` and ``./`` are dropped; ``a/../b`` is ``b``. A name whose ``..``
    would climb above the root raises PathError (we refuse rather than clamp: no
    honest layer has one). ``()`` is the root itself.
    """
    out: list[bytes] = []
    for part in name.split(b"/"):
        if not part or part == b".":
            continue
        if part == b"..":
            if not out:
                raise PathError(f"{what} {name.decode('utf-8', 'backslashreplace')!r} escapes the root")
            out.pop()
            continue
        out.append(part)
    return tuple(out)


def show(path: Path) -> str:
    """``/a/b`` for messages."""
    return "/" + b"/".join(path).decode("utf-8", "backslashreplace")


class Tree:
    """A writable upper directory over read-only lower directories (see module docstring).

    ``overlay``: interpret whiteouts and opaque directories (True for an overlay
    snapshot's layers; False for a plain directory, where a 0/0 device is just a file).
    Call ``close()`` when done (it closes the cached directory descriptors).
    """

    def __init__(self, upper: str, lowers: list[str] | None = None, *, overlay: bool = False) -> None:
        self.overlay = overlay
        self._roots: list[int] = []
        for path in [upper, *(lowers or [])]:
            self._roots.append(os.open(path, fsutil.O_PATH_DIR))
        self.dev = os.fstat(self._roots[0]).st_dev
        self._fds: dict[tuple[int, Path], int] = {}
        self._layers: dict[Path, tuple[int, ...]] = {(): tuple(range(len(self._roots)))}
        self._resolved: dict[Path, Path] = {}
        self._upper_ok: set[Path] = {()}
        self.upper_dirs_created: dict[Path, os.stat_result | None] = {}
        """Directories this tree made in the upper layer on its own (copy-up or implicit
        parents), with the lower directory's stat whose times they should get back."""

    @property
    def lower_count(self) -> int:
        return len(self._roots) - 1

    def close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        for fd in self._roots:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._roots = []

    # -- per-layer access ------------------------------------------------------------------
    def dirfd(self, layer: int, path: Path) -> int:
        """An ``O_PATH`` descriptor of canonical directory ``path`` in ``layer``.

        Raises PathError if it is not a real directory there (never follows a symlink).
        """
        if not path:
            return self._roots[layer]
        key = (layer, path)
        fd = self._fds.get(key)
        if fd is not None:
            return fd
        parent = self.dirfd(layer, path[:-1])
        try:
            fd = os.open(path[-1], fsutil.O_PATH_DIR, dir_fd=parent)
        except OSError as exc:
            raise PathError(f"{show(path)} is not a directory in layer {layer}: {exc.strerror}") from None
        self._fds[key] = fd
        return fd

    def upper_fd(self, path: Path) -> int:
        """``dirfd(0, path)``: the upper directory ``path`` (must exist there)."""
        return self.dirfd(0, path)

    def lstat(self, layer: int, path: Path) -> os.stat_result | None:
        """lstat of ``path`` in ``layer``, None when absent (or its parent is not a dir there)."""
        try:
            parent = self.dirfd(layer, path[:-1])
        except PathError:
            return None
        return fsutil.lstat_at(parent, path[-1])

    def dir_layers(self, path: Path) -> tuple[int, ...]:
        """Layers whose directory ``path`` shows in the merged directory, top first.

        Empty when ``path`` is not a directory in the merged tree.
        """
        cached = self._layers.get(path)
        if cached is not None:
            return cached
        if not path:
            return self._layers[()]
        parent_layers = self.dir_layers(path[:-1])
        found: list[int] = []
        for layer in parent_layers:
            st = self.lstat(layer, path)
            if st is None:
                continue
            if not stat.S_ISDIR(st.st_mode):
                break  # a file or a whiteout hides everything below
            found.append(layer)
            if self.overlay and layer < len(self._roots) - 1 and fsutil.is_opaque(self.dirfd(layer, path)):
                break
        result = tuple(found)
        self._layers[path] = result
        return result

    def lookup(self, path: Path) -> tuple[int, os.stat_result] | None:
        """The entry the merged tree shows at ``path`` (its parent must be canonical):
        ``(layer, lstat)``, or None if there is none (absent or whited out)."""
        for layer in self.dir_layers(path[:-1]):
            st = self.lstat(layer, path)
            if st is None:
                continue
            if self.overlay and fsutil.is_whiteout(st):
                return None
            return layer, st
        return None

    # -- resolution ------------------------------------------------------------------------
    def resolve(self, comps: Path, *, create: bool = False, what: str = "path") -> Path:
        """Resolve cleaned components ``comps`` to a canonical directory path.

        Symlinks on the way are followed inside the tree. With ``create`` missing
        directories are made in the upper layer (mode 0755, root) as ``tar`` does for an
        entry whose parents the archive lacks. Raises PathError when a component is not
        a directory, is missing (without ``create``), or there are too many symlinks.
        """
        hit = self._resolved.get(comps)
        if hit is not None:
            return hit
        todo = list(reversed(comps))
        cur: Path = ()
        hops = 0
        while todo:
            part = todo.pop()
            if part in (b"", b"."):
                continue
            if part == b"..":
                cur = cur[:-1]
                continue
            path = (*cur, part)
            if self.dir_layers(path):
                cur = path
                continue
            found = self.lookup(path)
            if found is None:
                if not create:
                    raise PathError(f"{what} {show(comps)}: {show(path)} does not exist")
                self._make_dir(path)
                cur = path
                continue
            layer, st = found
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise PathError(f"{what} {show(comps)}: too many levels of symbolic links at {show(path)}")
                target = os.readlink(part, dir_fd=self.dirfd(layer, cur))
                if target.startswith(b"/"):
                    cur = ()
                todo.extend(reversed([p for p in target.split(b"/") if p]))
                continue
            raise PathError(f"{what} {show(comps)}: {show(path)} is not a directory")
        self._resolved[comps] = cur
        return cur

    def _make_dir(self, path: Path) -> None:
        """Create the missing directory ``path`` in the upper layer (parent canonical)."""
        self.ensure_upper_dir(path[:-1])
        parent = self.upper_fd(path[:-1])
        st = fsutil.lstat_at(parent, path[-1])
        opaque = False
        if st is not None:  # an upper non-directory the merged view hides (a whiteout)
            fsutil.remove_at(parent, path[-1], dev=self.dev)
            opaque = self.overlay
        os.mkdir(path[-1], 0o755, dir_fd=parent)
        if opaque:
            self.set_opaque(path)
        self.upper_dirs_created[path] = None
        self.invalidate(path)

    def ensure_upper_dir(self, path: Path) -> int:
        """Make sure merged directory ``path`` exists in the upper layer; return its fd.

        A directory present only in lower layers is copied up: created with the lower
        directory's owner, mode and xattrs (times restored by the applier at the end).
        """
        if path in self._upper_ok:
            return self.upper_fd(path)
        for i in range(1, len(path) + 1):
            sub = path[:i]
            layers = self.dir_layers(sub)
            if layers and layers[0] == 0:
                continue
            if not layers:
                raise PathError(f"{show(sub)} is not a directory")
            lower = layers[0]
            st = self.lstat(lower, sub)
            assert st is not None
            parent = self.upper_fd(sub[:-1])
            existing = fsutil.lstat_at(parent, sub[-1])
            if existing is not None:  # cannot be a dir (layers[0] would be 0): e.g. a stale node
                fsutil.remove_at(parent, sub[-1], dev=self.dev)
            os.mkdir(sub[-1], 0o700, dir_fd=parent)
            fsutil.copy_dir_meta(parent, sub[-1], st, fsutil.list_xattrs(self.dirfd(lower, sub[:-1]), sub[-1]))
            self.upper_dirs_created[sub] = st
            self._layers[sub] = (0, *layers)
        self._upper_ok.add(path)
        return self.upper_fd(path)

    def set_opaque(self, path: Path) -> None:
        """Mark upper directory ``path`` opaque (hides every lower directory below it)."""
        os.setxattr(fsutil.proc_path(self.upper_fd(path)), fsutil.OPAQUE_XATTR, b"y")
        self.invalidate(path)

    def invalidate(self, path: Path) -> None:
        """Forget what is cached about ``path`` and below (after it changed in the upper layer)."""
        n = len(path)
        for stale in [k for k in self._layers if k[:n] == path and k]:
            del self._layers[stale]
        for fd_key in [k for k in self._fds if k[1][:n] == path]:
            with contextlib.suppress(OSError):
                os.close(self._fds.pop(fd_key))
        self._upper_ok = {k for k in self._upper_ok if k[:n] != path or not k}
        self._resolved.clear()

    def forget(self, path: Path) -> None:
        """Note that ``path``, absent from the upper layer and not a merged directory
        before, was just created there (cheaper than ``invalidate``)."""
        self._layers.pop(path, None)

    def is_cached_dir(self, path: Path) -> bool:
        """True if ``path`` is known as a merged directory (cheap: no system call)."""
        return bool(self._layers.get(path))

    def remove_upper(self, path: Path) -> None:
        """Remove ``path`` (a whole tree for a directory) from the upper layer."""
        fsutil.remove_at(self.upper_fd(path[:-1]), path[-1], dev=self.dev)
        self.invalidate(path)

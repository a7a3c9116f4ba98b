"""Paths inside a root file system, resolved in its scope, and tar streams of them (``docker cp``).

A ``Scope`` is a root directory (a container's mounted rootfs, or a local directory) plus the
mounts that cover parts of it (a container's volumes, binds and ``/etc/hosts`` files, each a
host directory or file). Every lookup walks the path one component at a time with ``*at``
calls on directory file descriptors (``O_NOFOLLOW``), as if the root were ``/``: a symlink is
read and resolved against the root (absolute) or its own directory (relative), ``..`` never
climbs above the root, and a component that is a mount target continues in the mount's source
(moby's ``FollowSymlinkInScope`` and its chrooted archive code, CVE-2018-15664). Nothing the
root holds can make a lookup, a read or a write land outside it, even when a process in the
container swaps directories for symlinks meanwhile: every operation acts on file descriptors
the walk opened itself.

``path_stat`` answers moby's ``ContainerPathStat`` (``name``, ``size``, ``mode`` as Go's
``os.FileMode`` bits, ``mtime``, ``linkTarget``). ``write_tar`` writes the tar of one path as
moby's ``TarResourceRebase`` names it (the requested basename is the top entry; ``dir/.`` gives
``./`` entries; ``/`` gives ``/x``). ``extract_tar`` unpacks a tar into a directory as moby's
``archive.Untar`` does (names cleaned, ``..`` escapes and symlink/hardlink targets outside the
directory refused, ``noOverwriteDirNonDir``, parents created ``0755``, directory times last).

Errors: ``OSError`` with the container path as ``filename`` for a lookup that fails
(``FileNotFoundError``, ``NotADirectoryError``, ``ELOOP``); ``ArchiveError`` (and its
``BreakoutError``, ``ReadOnlyError``) for what the archive or the scope refuses.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, Protocol, cast

log = logging.getLogger(__name__)

MAX_LINKS = 255
"""Symlinks followed in one lookup before ``ELOOP`` (Linux and moby use the same bound)."""
COPY_CHUNK = 1 << 20
"""Bytes read or written at a time for a file's content."""

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# Go's os.FileMode type bits (io/fs: ModeDir = 1<<31 ... ModeIrregular = 1<<19)
GO_MODE_DIR = 1 << 31
GO_MODE_SYMLINK = 1 << 27
GO_MODE_DEVICE = 1 << 26
GO_MODE_NAMED_PIPE = 1 << 25
GO_MODE_SOCKET = 1 << 24
GO_MODE_SETUID = 1 << 23
GO_MODE_SETGID = 1 << 22
GO_MODE_CHAR_DEVICE = 1 << 21
GO_MODE_STICKY = 1 << 20


class Reader(Protocol):
    """What a tar is read from (a file, a pipe, a call's stream)."""

    def read(self, n: int = -1, /) -> bytes: ...


class Writer(Protocol):
    """What a tar is written to."""

    def write(self, data: bytes, /) -> int: ...


class ArchiveError(Exception):
    """The archive or the operation is refused; the message is the one a Docker user reads."""


class BreakoutError(ArchiveError):
    """A tar entry (its name, a symlink or a hardlink target) would leave the extraction directory."""


class ReadOnlyError(ArchiveError):
    """A write into a read-only mount or a read-only root."""


@dataclass(frozen=True)
class Mount:
    """A host ``source`` (directory or file) seen at ``target`` (absolute path in the scope).

    ``volume``: a user's volume or bind mount (moby's ``MountPoints``), writable even when the
    root is read-only unless ``read_only``.
    """

    target: str
    source: str
    read_only: bool = False
    volume: bool = False


class Location:
    """Where a path ended: entry ``name`` in the directory ``dir_fd`` (``"."``: that directory
    itself), its resolved ``path`` in the scope and the innermost ``mount`` it is in (None: the
    root). Owns ``dir_fd``; close it (or use it as a context manager)."""

    def __init__(self, dir_fd: int, name: str, path: str, mount: Mount | None) -> None:
        self.dir_fd = dir_fd
        self.name = name
        self.path = path
        self.mount = mount

    def lstat(self) -> os.stat_result:
        return os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)

    def close(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def __enter__(self) -> Location:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _split(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def abspath(path: str) -> str:
    """``path`` made absolute and clean, as Go's ``filepath.Join("/", path)`` (never ``//``)."""
    return posixpath.normpath("/" + path.lstrip("/"))


def asserts_dir(path: str) -> bool:
    """True for a path ending in ``/`` or ``/.`` (moby: it names a directory, a final symlink is followed)."""
    return path.endswith("/") or path.endswith("/.") or path == "."


class Scope:
    """A root directory and its mounts (see module docstring). ``read_only``: the root refuses writes."""

    def __init__(self, root: str, mounts: Sequence[Mount] = (), *, read_only: bool = False) -> None:
        self.root = root
        self.root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.mounts = {abspath(m.target): m for m in mounts}
        self.read_only = read_only

    def close(self) -> None:
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1

    def __enter__(self) -> Scope:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- lookups -------------------------------------------------------------------------------
    def writable(self, mount: Mount | None) -> bool:
        return not mount.read_only if mount is not None else not self.read_only

    def _mount_location(self, mount: Mount, path: str) -> Location:
        if os.path.isdir(mount.source):
            return Location(os.open(mount.source, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), ".", path, mount)
        parent, base = os.path.split(mount.source)
        return Location(os.open(parent or "/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), base, path, mount)

    def resolve(self, path: str, *, follow: bool = False, create: bool = False, missing_ok: bool = False) -> Location:
        """The ``Location`` of ``path`` (absolute, or relative to the root).

        Symlinks before the last component are always followed in scope; the last one only
        with ``follow``. A missing last component is returned as is (its ``lstat`` fails);
        a missing directory before it raises ``FileNotFoundError`` unless ``create`` (made
        ``0755``, as moby's ``MkdirAll``; ``ReadOnlyError`` where writes are refused) or
        ``missing_ok`` (the Location then is the deepest existing directory and ``path``
        the lexical rest: moby's ``FollowSymlinkInScope`` for a broken link). A file used as
        a directory raises ``NotADirectoryError``; more than ``MAX_LINKS`` symlinks ``ELOOP``.
        """
        parts = _split(path)
        stack: list[tuple[str, int, Mount | None]] = []
        links = 0
        try:
            while parts:
                part = parts.pop(0)
                if part == "..":
                    if stack:
                        os.close(stack.pop()[1])
                    continue
                names = [s[0] for s in stack]
                cpath = "/" + "/".join([*names, part])
                last = not parts
                cur_fd = stack[-1][1] if stack else self.root_fd
                cur_mount = stack[-1][2] if stack else None
                mount = self.mounts.get(cpath)
                if mount is not None:
                    if last:
                        return self._mount_location(mount, cpath)
                    if not os.path.isdir(mount.source):
                        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), cpath)
                    stack.append((part, os.open(mount.source, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), mount))
                    continue
                try:
                    st = os.stat(part, dir_fd=cur_fd, follow_symlinks=False)
                except FileNotFoundError:
                    if last:
                        return Location(os.dup(cur_fd), part, cpath, cur_mount)
                    if missing_ok:
                        rest = "/".join([part, *parts])
                        return Location(os.dup(cur_fd), part, posixpath.normpath(cpath + "/" + rest), cur_mount)
                    if not create:
                        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), cpath) from None
                    if not self.writable(cur_mount):
                        raise ReadOnlyError(_read_only_message(cur_mount)) from None
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=cur_fd)
                    st = os.stat(part, dir_fd=cur_fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode) and (not last or follow):
                    links += 1
                    if links > MAX_LINKS:
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                    target = os.readlink(part, dir_fd=cur_fd)
                    if target.startswith("/"):
                        while stack:
                            os.close(stack.pop()[1])
                    parts = _split(target) + parts
                    continue
                if last:
                    return Location(os.dup(cur_fd), part, cpath, cur_mount)
                if not stat.S_ISDIR(st.st_mode):
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), cpath)
                stack.append((part, os.open(part, _DIR_FLAGS, dir_fd=cur_fd), cur_mount))
            # the path named a directory the walk stands in (``/``, ``a/..``, a link to a directory)
            cur_fd = stack[-1][1] if stack else self.root_fd
            cur_mount = stack[-1][2] if stack else None
            return Location(os.dup(cur_fd), ".", "/" + "/".join(s[0] for s in stack), cur_mount)
        finally:
            for _name, fd, _m in stack:
                os.close(fd)

    def realpath(self, path: str) -> str:
        """``path`` with every symlink followed in scope, missing components kept (``linkTarget``)."""
        with self.resolve(path, follow=True, missing_ok=True) as loc:
            return loc.path

    def open_dir(self, path: str, *, create: bool = False) -> tuple[int, Mount | None, str]:
        """An ``O_PATH`` fd of the directory ``path`` (symlinks followed in scope), its mount and
        its resolved path; ``create`` makes missing directories (``0755``)."""
        with self.resolve(path, follow=True, create=create) as loc:
            if loc.name == ".":
                return os.dup(loc.dir_fd), loc.mount, loc.path
            try:
                fd = os.open(loc.name, _DIR_FLAGS, dir_fd=loc.dir_fd)
            except FileNotFoundError:
                if not create:
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), loc.path) from None
                if not self.writable(loc.mount):
                    raise ReadOnlyError(_read_only_message(loc.mount)) from None
                with contextlib.suppress(FileExistsError):
                    os.mkdir(loc.name, 0o755, dir_fd=loc.dir_fd)
                fd = os.open(loc.name, _DIR_FLAGS, dir_fd=loc.dir_fd)
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), loc.path) from None
                raise
            return fd, loc.mount, loc.path


def _read_only_message(mount: Mount | None) -> str:
    if mount is not None and mount.volume:
        return "mounted volume is marked read-only"
    if mount is not None:
        return f"{mount.target} is mounted read-only"
    return "container rootfs is marked read-only"


# -- stat ----------------------------------------------------------------------------------------
def go_file_mode(st_mode: int) -> int:
    """``st_mode`` as Go's ``os.FileMode`` (os/stat_linux.go ``fillFileStatFromSys``)."""
    mode = st_mode & 0o777
    kind = stat.S_IFMT(st_mode)
    mode |= {
        stat.S_IFBLK: GO_MODE_DEVICE,
        stat.S_IFCHR: GO_MODE_DEVICE | GO_MODE_CHAR_DEVICE,
        stat.S_IFDIR: GO_MODE_DIR,
        stat.S_IFIFO: GO_MODE_NAMED_PIPE,
        stat.S_IFLNK: GO_MODE_SYMLINK,
        stat.S_IFSOCK: GO_MODE_SOCKET,
    }.get(kind, 0)
    if st_mode & stat.S_ISGID:
        mode |= GO_MODE_SETGID
    if st_mode & stat.S_ISUID:
        mode |= GO_MODE_SETUID
    if st_mode & stat.S_ISVTX:
        mode |= GO_MODE_STICKY
    return mode


def rfc3339_ns(ns: int) -> str:
    """Nanoseconds since the epoch as Go's ``time.RFC3339Nano`` in UTC (trailing zeros dropped)."""
    import datetime as dt

    secs, frac = divmod(ns, 1_000_000_000)
    base = dt.datetime.fromtimestamp(secs, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return base + (f".{frac:09d}".rstrip("0") if frac else "") + "Z"


def base_name(path: str) -> str:
    """moby's ``filepath.Base(PreserveTrailingDotOrSeparator(Join("/", path), path))``: the name a
    stat reports and the top entry of an archive (``"."`` for ``dir/.``, ``"/"`` for the root)."""
    if path.endswith("/.") or path == ".":
        return "."
    clean = abspath(path)
    return "/" if clean == "/" else posixpath.basename(clean)


def path_stat(scope: Scope, path: str) -> dict[str, Any]:
    """moby's ``ContainerPathStat`` of ``path``: ``{name, size, mode, mtime, linkTarget}``.

    The last component is not followed (a symlink is described, with ``linkTarget`` its
    fully resolved path in the scope) unless the path ends in ``/`` or ``/.``.
    Raises ``FileNotFoundError``/``NotADirectoryError`` (``filename`` = the path).
    """
    with scope.resolve(path, follow=asserts_dir(path)) as loc:
        try:
            st = loc.lstat()
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None
        if asserts_dir(path) and not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
    link_target = scope.realpath(path) if stat.S_ISLNK(st.st_mode) else ""
    return {
        "name": base_name(path),
        "size": st.st_size,
        "mode": go_file_mode(st.st_mode),
        "mtime": rfc3339_ns(st.st_mtime_ns),
        "linkTarget": link_target,
    }


# -- writing a tar -------------------------------------------------------------------------------
class _FileReader:
    """Exactly ``size`` bytes of an open file: zeros past a file that shrank meanwhile, nothing
    past ``size`` of one that grew (the tar header is written first)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.left = size

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.left:
            n = self.left
        n = min(n, COPY_CHUNK)
        data = os.read(self.fd, n) if n else b""
        if len(data) < n:
            data += b"\0" * (n - len(data))
        self.left -= len(data)
        return data


def _tarinfo(name: str, st: os.stat_result) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mode = stat.S_IMODE(st.st_mode)
    ti.uid, ti.gid = st.st_uid, st.st_gid
    ti.mtime = int(st.st_mtime)  # moby truncates to the second
    ti.uname = ti.gname = ""
    return ti


def write_tar(scope: Scope, path: str, out: Writer, *, arcname: str | None = None) -> None:
    """Write the tar of ``path`` (file, symlink, device or a whole directory tree) to ``out``.

    Names as moby's ``TarResourceRebase(resolvedPath, filepath.Base(absPath))``: the top entry
    is ``arcname`` (default ``base_name(path)``: ``d`` for ``/x/d`` and ``/x/d/``, ``.`` for
    ``/x/d/.``, ``""`` (entries ``/a``...) for ``/``), the rest below it. The last component is
    not followed unless the path ends in ``/`` or ``/.``. Directory trees are walked in scope:
    a subdirectory that is a mount target is read from the mount's source; symlinks are
    archived as symlinks; hard links within the archive become link entries; sockets are
    skipped. Raises as ``path_stat`` for a missing path; a file or directory that vanishes
    during the walk is skipped.
    """
    name = base_name(path) if arcname is None else arcname
    top = "" if name == "/" else name
    loc = scope.resolve(path, follow=asserts_dir(path))
    try:
        try:
            loc.lstat()
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None
        with tarfile.open(fileobj=cast(IO[bytes], out), mode="w|", format=tarfile.PAX_FORMAT, bufsize=64 * 1024) as tar:
            _TarWalk(scope, tar).run(loc.dir_fd, loc.name, top, loc.path)
    finally:
        loc.close()


class _TarWalk:
    def __init__(self, scope: Scope, tar: tarfile.TarFile) -> None:
        self.scope = scope
        self.tar = tar
        self.links: dict[tuple[int, int], str] = {}

    def run(self, dir_fd: int, name: str, arcname: str, path: str) -> None:
        # an explicit stack of directories being listed keeps deep trees off Python's recursion limit
        stack: list[tuple[int, Iterator[str], str, str]] = []
        try:
            opened = self._add(dir_fd, name, arcname, path)
            if opened is not None:
                stack.append(opened)
            while stack:
                fd, names, arc, cpath = stack[-1]
                child = next(names, None)
                if child is None:
                    os.close(fd)
                    stack.pop()
                    continue
                child_path = posixpath.join(cpath, child)
                child_arc = f"{arc}/{child}"
                mount = self.scope.mounts.get(child_path)
                if mount is not None:
                    with self.scope._mount_location(mount, child_path) as mloc:
                        opened = self._add(mloc.dir_fd, mloc.name, child_arc, child_path)
                else:
                    opened = self._add(fd, child, child_arc, child_path)
                if opened is not None:
                    stack.append(opened)
        finally:
            for fd, _n, _a, _p in stack:
                os.close(fd)

    def _add(self, dir_fd: int, name: str, arcname: str, path: str) -> tuple[int, Iterator[str], str, str] | None:
        """Archive one entry; a directory is opened and returned for listing."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None  # gone meanwhile
        ti = _tarinfo(arcname, st)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            try:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            except (FileNotFoundError, NotADirectoryError, OSError) as exc:
                if isinstance(exc, PermissionError):
                    raise
                return None
            ti.type = tarfile.DIRTYPE
            try:
                self.tar.addfile(ti)
                names = sorted(os.listdir(fd))
            except BaseException:
                os.close(fd)
                raise
            return fd, iter(names), arcname.rstrip("/") if arcname != "/" else "", path
        if stat.S_ISREG(mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.links:
                ti.type = tarfile.LNKTYPE
                ti.linkname = self.links[key]
                self.tar.addfile(ti)
                return None
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
            try:
                fd = os.open(name, flags, dir_fd=dir_fd)
            except (FileNotFoundError, OSError) as exc:
                if isinstance(exc, PermissionError):
                    raise
                return None
            try:
                fst = os.fstat(fd)
                if not stat.S_ISREG(fst.st_mode):
                    return None  # swapped meanwhile
                ti.size = fst.st_size
                self.tar.addfile(ti, cast(IO[bytes], _FileReader(fd, fst.st_size)))
            finally:
                os.close(fd)
            if st.st_nlink > 1:
                self.links[key] = arcname
            return None
        if stat.S_ISLNK(mode):
            ti.type = tarfile.SYMTYPE
            ti.linkname = os.readlink(name, dir_fd=dir_fd)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(mode):
            ti.type = tarfile.FIFOTYPE
        else:
            return None  # sockets: moby skips them too
        self.tar.addfile(ti)
        return None


# -- extracting a tar ----------------------------------------------------------------------------
@dataclass
class ExtractOptions:
    """moby's ``TarOptions`` for a copy: ``no_overwrite_dir_non_dir``; ``chown`` (uid, gid) for
    every entry instead of the archive's; ``no_lchown`` keeps the extracting user's ownership
    (a client's local copy); ``rebase`` ``(old, new)`` renames a leading name component
    (docker's ``RebaseArchiveEntries``)."""

    no_overwrite_dir_non_dir: bool = False
    chown: tuple[int, int] | None = None
    no_lchown: bool = False
    rebase: tuple[str, str] | None = None


def rebase_name(name: str, old: str, new: str) -> str:
    """docker's ``RebaseArchiveEntries`` for one name: ``old`` -> ``new`` as the leading component."""
    if name == old or name.rstrip("/") == old:
        return new
    if name.startswith(old + "/"):
        return new + name[len(old) :]
    return name


def _within(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


def _go_join(*parts: str) -> str:
    """Go's ``filepath.Join``: a later absolute part does not reset the path."""
    return posixpath.normpath("/".join(p for p in parts if p))


def extract_tar(
    scope: Scope,
    dest: str,
    stream: Reader,
    options: ExtractOptions | None = None,
    *,
    on_entry: Callable[[str], None] | None = None,
) -> int:
    """Unpack the tar (plain, gzip, bzip2 or xz) read from ``stream`` into the directory ``dest``
    (a resolved path in the scope); returns the number of entries written.

    moby's ``archive.Unpack``: names are cleaned and joined to ``dest`` (an absolute name stays
    inside it); one that climbs out raises ``BreakoutError`` (``"../x" is outside of "/dest"``),
    as does a symlink whose target, joined to its directory, or a hard link whose target,
    joined to ``dest``, is outside ``dest``. Missing parents are made ``0755``. An existing
    entry is replaced unless both are directories (then merged); with
    ``no_overwrite_dir_non_dir`` replacing a directory by a non-directory or the reverse
    raises ``ArchiveError``. Directory times are set last. Writes into a read-only mount (or
    root) raise ``ReadOnlyError``. ``tarfile.TarError`` for a stream that is no tar.
    """
    opts = options or ExtractOptions()
    dest = abspath(dest)
    count = 0
    dirs: list[tuple[str, int, int]] = []
    cache: dict[str, tuple[int, Mount | None]] = {}

    def parent_fd(path: str) -> tuple[int, Mount | None]:
        if path not in cache:
            for fd, _m in cache.values():
                os.close(fd)
            cache.clear()
            fd, mount, _resolved = scope.open_dir(path, create=True)
            cache[path] = (fd, mount)
        return cache[path]

    try:
        with tarfile.open(fileobj=cast(IO[bytes], stream), mode="r|*") as tar:
            for member in tar:
                name = member.name
                if opts.rebase is not None:
                    name = rebase_name(name, *opts.rebase)
                clean = posixpath.normpath(name) if name else "."
                path = _go_join(dest, clean)
                if not _within(path, dest):
                    raise BreakoutError(f'"{member.name}" is outside of "{dest}"')
                if on_entry is not None:
                    on_entry(path)
                if path == dest:
                    if member.isdir():
                        continue  # the directory itself: it exists
                    raise ArchiveError(f'cannot overwrite directory "{dest}" with non-directory "{dest}"')
                pfd, mount = parent_fd(posixpath.dirname(path))
                if not scope.writable(mount):
                    raise ReadOnlyError(_read_only_message(mount))
                base = posixpath.basename(path)
                changed = _extract_one(scope, tar, member, pfd, base, path, dest, opts)
                if changed:  # a symlink or a removal changes what later paths resolve to
                    for fd, _m in cache.values():
                        os.close(fd)
                    cache.clear()
                if member.isdir():
                    dirs.append((path, int(member.mtime * 1_000_000_000), 0))
                count += 1
    finally:
        for fd, _m in cache.values():
            os.close(fd)
    for path, mtime_ns, _ in dirs:
        try:
            with scope.resolve(path) as loc:
                os.utime(loc.name, ns=(mtime_ns, mtime_ns), dir_fd=loc.dir_fd, follow_symlinks=False)
        except OSError as exc:
            log.debug("directory time of %s not set: %s", path, exc)
    return count


def _extract_one(
    scope: Scope,
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    pfd: int,
    base: str,
    path: str,
    dest: str,
    opts: ExtractOptions,
) -> bool:
    """Create one entry ``base`` in ``pfd``; True when it removed something or made a symlink."""
    changed = False
    try:
        existing: os.stat_result | None = os.stat(base, dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        existing = None
    if existing is not None:
        is_dir = stat.S_ISDIR(existing.st_mode)
        if opts.no_overwrite_dir_non_dir and is_dir and not member.isdir():
            raise ArchiveError(f'cannot overwrite directory "{path}" with non-directory "{dest}"')
        if opts.no_overwrite_dir_non_dir and not is_dir and member.isdir():
            raise ArchiveError(f'cannot overwrite non-directory "{path}" with directory "{dest}"')
        if not (is_dir and member.isdir()):
            if is_dir:
                shutil.rmtree(base, dir_fd=pfd)
            else:
                os.unlink(base, dir_fd=pfd)
            changed = True
    mode = member.mode & 0o7777
    if member.isdir():
        if existing is None or not stat.S_ISDIR(existing.st_mode):
            os.mkdir(base, 0o700, dir_fd=pfd)
    elif member.isreg():
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(base, flags, 0o600, dir_fd=pfd)
        try:
            src = tar.extractfile(member)
            if src is not None:
                while chunk := src.read(COPY_CHUNK):
                    _write_all(fd, chunk)
        finally:
            os.close(fd)
    elif member.issym():
        target = _go_join(posixpath.dirname(path), member.linkname)
        if not _within(target, dest):
            raise BreakoutError(f'invalid symlink "{path}" -> "{member.linkname}"')
        os.symlink(member.linkname, base, dir_fd=pfd)
        changed = True
    elif member.islnk():
        target = _go_join(dest, member.linkname)
        if not _within(target, dest):
            raise BreakoutError(f'invalid hardlink "{path}" -> "{member.linkname}"')
        with scope.resolve(target) as src_loc:
            os.link(src_loc.name, base, src_dir_fd=src_loc.dir_fd, dst_dir_fd=pfd, follow_symlinks=False)
        return changed  # a link shares its target's owner, mode and times
    elif member.ischr() or member.isblk() or member.isfifo():
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else stat.S_IFIFO
        os.mknod(base, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=pfd)
    else:
        log.debug("tar entry %s of type %r skipped", path, member.type)
        return changed
    _set_attrs(pfd, base, member, mode, opts)
    return changed


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _set_attrs(pfd: int, base: str, member: tarfile.TarInfo, mode: int, opts: ExtractOptions) -> None:
    """Owner, mode and times of the entry just made, through an ``O_PATH`` fd of it, so a swap for a
    symlink meanwhile cannot redirect them (a symlink gets its owner and times, never a mode)."""
    uid, gid = opts.chown if opts.chown is not None else (member.uid, member.gid)
    mtime_ns = int(member.mtime * 1_000_000_000)
    fd = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            if not opts.no_lchown:
                os.chown(base, uid, gid, dir_fd=pfd, follow_symlinks=False)
            with contextlib.suppress(OSError):
                os.utime(base, ns=(mtime_ns, mtime_ns), dir_fd=pfd, follow_symlinks=False)
            return
        proc = f"/proc/self/fd/{fd}"
        if not opts.no_lchown:
            os.chown(proc, uid, gid)
        os.chmod(proc, mode)
        os.utime(proc, ns=(mtime_ns, mtime_ns))
    finally:
        os.close(fd)

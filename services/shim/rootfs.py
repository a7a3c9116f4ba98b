"""Looking inside a container's rootfs safely: user lookup and working directory creation.

The rootfs comes from an image, so anything in it may be hostile (CASES.md C15,
CVE-2024-9676): ``/etc/passwd`` can be a symlink to a host file, to ``/dev/zero`` or to
a FIFO. Every path is resolved as if the rootfs were ``/`` (``openat2`` with
``RESOLVE_IN_ROOT``, or a component-by-component walk where that is missing), only
regular files are read, opened non-blocking and read up to a size cap.

User rules (Docker's, C15): ``""`` is root; ``name``, ``uid``, ``name:group``,
``uid:gid``, ``uid:groupname``. Numeric ids are used even without a passwd entry; a
numeric uid without a gid takes the passwd entry's gid if there is one, else 0. Names
must resolve. Supplementary groups come from ``/etc/group`` membership. HOME is the
passwd entry's home, else ``/``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from dataclasses import dataclass, field

from services.shim import mount

MAX_FILE_BYTES = 4 * 1024 * 1024
"""Largest /etc/passwd or /etc/group we read."""

_SYS_OPENAT2 = 437
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_MAX_LINKS = 255


class RootfsError(Exception):
    """A lookup inside the rootfs failed; the message says what and where."""


class WorkdirError(RootfsError):
    """The working directory cannot be made: a component exists and is not a directory.

    Docker reports the start as "cannot be invoked" (exit status 126), as for a ``cwd``
    the runtime cannot change to.
    """


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_openat2_ok: bool | None = None


def _openat2(dirfd: int, path: str, flags: int) -> int:
    global _openat2_ok
    libc = mount.libc()
    how = _OpenHow(flags | os.O_CLOEXEC, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    fd = libc.syscall(_SYS_OPENAT2, dirfd, path.encode(), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EPERM) and _openat2_ok is None:
            _openat2_ok = False
        raise OSError(err, os.strerror(err), path)
    _openat2_ok = True
    return int(fd)


def _openat2_available() -> bool:
    """False once openat2 turned out to be missing (old kernel, seccomp)."""
    return _openat2_ok is not False


def secure_join(root: str, unsafe: str) -> str:
    """Return the host path of ``unsafe`` resolved inside ``root`` (symlinks stay inside).

    Like Go's filepath-securejoin: each component is looked up with ``lstat``; a symlink's
    target is resolved relative to ``root`` (absolute) or its directory (relative), and
    ``..`` never climbs above ``root``. Missing trailing components are kept as they are.
    """
    root = os.path.realpath(root)
    parts = [p for p in unsafe.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            resolved.append(part)
            resolved.extend(p for p in parts if p not in ("", "."))
            break
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_LINKS:
                raise RootfsError(f"too many symlinks resolving {unsafe!r} in the rootfs")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def open_in_root(root: str, path: str, flags: int = os.O_RDONLY) -> int:
    """Open ``path`` as seen from inside ``root``; returns an fd (close-on-exec)."""
    if _openat2_ok is not False:
        rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return _openat2(rootfd, path, flags)
        except OSError:
            if _openat2_available():
                raise
        finally:
            os.close(rootfd)
    host = secure_join(root, path)
    return os.open(host, flags | os.O_NOFOLLOW | os.O_CLOEXEC)


def read_file(root: str, path: str, limit: int = MAX_FILE_BYTES) -> bytes | None:
    """Read a regular file inside ``root``; None if it does not exist.

    Raises ``RootfsError`` for anything that is not a regular file (device, FIFO,
    directory, socket) or larger than ``limit`` bytes. Never blocks on a FIFO.
    """
    try:
        fd = open_in_root(root, path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP, errno.EXDEV):
            raise RootfsError(f"{path} in the container is not a regular file ({exc.strerror})") from None
        raise RootfsError(f"cannot open {path} in the container: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RootfsError(f"{path} in the container is not a regular file")
        if st.st_size > limit:
            raise RootfsError(f"{path} in the container is larger than {limit} bytes")
        chunks: list[bytes] = []
        total = 0
        while True:
            data = os.read(fd, 65536)
            if not data:
                break
            total += len(data)
            if total > limit:
                raise RootfsError(f"{path} in the container is larger than {limit} bytes")
            chunks.append(data)
        return b"".join(chunks)
    finally:
        os.close(fd)


@dataclass
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass
class GroupEntry:
    name: str
    gid: int
    members: list[str] = field(default_factory=list)


def parse_passwd(data: bytes) -> list[PasswdEntry]:
    """Parse ``/etc/passwd`` (malformed lines are skipped)."""
    out = []
    for raw in data.decode("utf-8", errors="replace").splitlines():
        if not raw or raw.startswith("#"):
            continue
        f = raw.split(":")
        if len(f) < 4:
            continue
        try:
            out.append(PasswdEntry(f[0], int(f[2]), int(f[3]), f[5] if len(f) > 5 else ""))
        except ValueError:
            continue
    return out


def parse_group(data: bytes) -> list[GroupEntry]:
    """Parse ``/etc/group`` (malformed lines are skipped)."""
    out = []
    for raw in data.decode("utf-8", errors="replace").splitlines():
        if not raw or raw.startswith("#"):
            continue
        f = raw.split(":")
        if len(f) < 3:
            continue
        try:
            members = [m for m in (f[3].split(",") if len(f) > 3 else []) if m]
            out.append(GroupEntry(f[0], int(f[2]), members))
        except ValueError:
            continue
    return out


@dataclass
class ResolvedUser:
    uid: int
    gid: int
    additional_gids: list[int]
    home: str


def _numeric(value: str) -> int | None:
    if value.isdigit():
        n = int(value)
        if n > 2**32 - 2:
            raise RootfsError(f"user or group id {value} is out of range")
        return n
    return None


def resolve_user(root: str, spec: str, extra_groups: list[str] | None = None) -> ResolvedUser:
    """Resolve a Docker ``User`` string against the rootfs (see module docstring).

    Raises ``RootfsError`` for an unknown name or an unsafe passwd/group file.
    """
    user, _, group = (spec or "").partition(":")
    uid_num = _numeric(user) if user else 0
    gid_num = _numeric(group) if group else None
    passwd = parse_passwd(read_file(root, "/etc/passwd") or b"")
    groups = parse_group(read_file(root, "/etc/group") or b"")
    entry: PasswdEntry | None = None
    if uid_num is None:
        entry = next((e for e in passwd if e.name == user), None)
        if entry is None:
            raise RootfsError(f"unable to find user {user}: no matching entries in passwd file")
        uid = entry.uid
    else:
        uid = uid_num
        entry = next((e for e in passwd if e.uid == uid), None)
    if group:
        if gid_num is not None:
            gid = gid_num
        else:
            g = next((g for g in groups if g.name == group), None)
            if g is None:
                raise RootfsError(f"unable to find group {group}: no matching entries in group file")
            gid = g.gid
    else:
        gid = entry.gid if entry is not None else 0
    # the primary group first, as dockerd's getUser (daemon/oci_linux.go, since 20.10.18:
    # CVE-2022-36109) puts it, so that `id` lists it among the groups and a setgroups() in
    # the container cannot drop it
    additional: list[int] = [gid]
    if entry is not None:
        for g in groups:
            if entry.name in g.members and g.gid != gid and g.gid not in additional:
                additional.append(g.gid)
    for extra in extra_groups or []:
        n = _numeric(extra)
        if n is None:
            g = next((g for g in groups if g.name == extra), None)
            if g is None:
                raise RootfsError(f"unable to find group {extra}: no matching entries in group file")
            n = g.gid
        if n not in additional:
            additional.append(n)
    home = entry.home if entry is not None and entry.home else "/"
    return ResolvedUser(uid, gid, additional, home)


def make_workdir(root: str, path: str, uid: int, gid: int) -> None:
    """Create ``path`` inside ``root`` if missing (Docker's WORKDIR), owned by ``uid:gid``.

    Only the directories created here are chowned. Raises ``RootfsError`` if a component
    exists and is not a directory (``WorkdirError``).
    """
    host = secure_join(root, path)
    root_real = os.path.realpath(root)
    missing: list[str] = []
    probe = host
    while probe != root_real and not os.path.lexists(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    if os.path.lexists(probe) and not os.path.isdir(probe):
        raise WorkdirError(f"working directory {path}: {probe[len(root_real) :] or '/'} is not a directory")
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o755)
        except FileExistsError:
            continue
        os.lchown(d, uid, gid)


def copy_tree(src: str, dst: str) -> None:
    """Copy the contents of directory ``src`` into ``dst`` keeping modes, owners and symlinks.

    Used for Docker's volume copy-up (a new volume gets what the image has at its target).
    Device nodes and sockets are skipped.
    """
    import shutil

    st = os.lstat(src)
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.lchown(dst, st.st_uid, st.st_gid)
    for entry in os.scandir(src):
        s_path = os.path.join(src, entry.name)
        d_path = os.path.join(dst, entry.name)
        est = os.lstat(s_path)
        if stat.S_ISDIR(est.st_mode):
            os.mkdir(d_path)
            copy_tree(s_path, d_path)
        elif stat.S_ISLNK(est.st_mode):
            os.symlink(os.readlink(s_path), d_path)
            os.lchown(d_path, est.st_uid, est.st_gid)
        elif stat.S_ISREG(est.st_mode):
            shutil.copy2(s_path, d_path, follow_symlinks=False)
            os.lchown(d_path, est.st_uid, est.st_gid)


def _elf_interpreter(head: bytes, fd: int) -> str | None:
    """The PT_INTERP path of a 64-bit little-endian ELF (None when static or not ELF64)."""
    import struct

    if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        return None
    (phoff,) = struct.unpack_from("<Q", head, 32)
    phentsize, phnum = struct.unpack_from("<HH", head, 54)
    table = os.pread(fd, phentsize * phnum, phoff)
    for i in range(phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", table, i * phentsize)
        if p_type == 3:
            return os.pread(fd, min(p_filesz, 4096), p_offset).split(b"\0", 1)[0].decode(errors="replace")
    return None


def missing_interpreter(root: str, args: list[str], env: list[str], cwd: str = "/") -> str | None:
    """Why the command cannot be executed although it exists, or None (CASES.md C20).

    A script whose ``#!`` interpreter, or a dynamic ELF whose loader, is not in the rootfs
    fails inside the runtime *after* the start (exit 1 and a message), so the shim checks
    first and reports it as "found but not executable" (126), as the cases require.
    Commands that do not exist are left to the runtime (127).
    """
    if not args:
        return None
    prog = args[0]
    candidates: list[str]
    if "/" in prog:
        candidates = [prog if prog.startswith("/") else os.path.join(cwd, prog)]
    else:
        path = next(
            (e[5:] for e in env if e.startswith("PATH=")),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        candidates = [os.path.join(d or ".", prog) for d in path.split(":")]
    for candidate in candidates:
        try:
            fd = open_in_root(root, candidate, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
                return None  # the runtime reports these itself (126)
            head = os.pread(fd, 256, 0)
            if head.startswith(b"#!"):
                line = head[2:].split(b"\n", 1)[0].strip().split()
                interp = line[0].decode(errors="replace") if line else ""
            else:
                interp = _elf_interpreter(head, fd) or ""
        finally:
            os.close(fd)
        if not interp:
            return None
        try:
            ifd = open_in_root(root, interp, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
            os.close(ifd)
            return None
        except OSError:
            kind = "interpreter" if head.startswith(b"#!") else "dynamic loader"
            return f'exec: "{candidate}": {kind} {interp} not found in the container (no such file or directory)'
    return None

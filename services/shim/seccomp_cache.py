"""Compiled seccomp filters of crun, kept so each distinct profile is compiled once.

crun compiles the spec's ``linux.seccomp`` with libseccomp at every ``crun create``
(10-17 ms of CPU for Docker's default profile here). crun 1.8.1 (``man crun``, "Extensions to
OCI") skips that when the annotation ``run.oci.seccomp_bpf_data`` holds the base64 of
the raw filter handed to ``seccomp(SECCOMP_SET_MODE_FILTER)``; it still writes the
filter it loads to ``<crun --root>/<id>/seccomp.bpf`` (``crun exec`` reads it from
there) and still applies ``linux.seccomp.flags``. It keeps no cache across containers
itself (newer crun does, under ``<root>/.cache/seccomp``), so the shim does:

- ``SeccompCache.annotate(spec)`` (before ``crun create``): the entry of the spec's key,
  if there is a valid one, goes into ``spec["annotations"]`` and the ``linux.seccomp``
  section stays (its flags, and documentation for any other reader);
- ``SeccompCache.remember(lookup, state_dir)`` (after a create that compiled): the
  ``seccomp.bpf`` crun wrote is stored under the key;
- ``SeccompCache.drop(key)``: an entry crun refused is removed (the shim then creates
  once more, without the annotation).

The key (``filter_key``) is a sha256 over: the runtime binary and the libseccomp it
links, each as path + (device, inode, size, mtime_ns, ctime_ns), so upgrading or
replacing either (package upgrade, rebuild, copy over it) changes the key; the
kernel's ``uname`` release, version and machine; crun's compile option
``run.oci.seccomp_fail_unknown_syscall``; and the canonical JSON (sorted keys,
compact) of ``linux.seccomp``, flags included. These are the inputs of crun's own
cache key (crun version, libseccomp version, uname, the seccomp section). libseccomp
is found once per process the way the dynamic loader finds ``libseccomp.so.2`` for
crun (which runs with PATH alone in its environment, so LD_LIBRARY_PATH plays no
part): the paths ``/etc/ld.so.cache`` maps that soname to (``ldso_paths``); each
lookup then costs a ``stat`` per file, not a loader search (~0.2 ms in all, most of it
the canonical JSON). Not tracked: a libseccomp the loader would find by other means (an
RPATH in a custom crun build). A refused entry (only such an untracked change can make
one) is dropped and the create made again; with ``no-new-privileges`` crun applies the
filter at ``start`` instead, so there it fails that one start.

An entry is one file ``<dir>/<key>``: ``MAGIC``, the sha256 of the filter, the filter.
It is written to a temporary name in the same directory and renamed, never fsynced:
a torn or otherwise damaged entry fails its digest and counts as a miss, so it can
never hand crun a filter crun did not write. Entries are validated (``check_filter``)
both before storing and before use. The directory holds at most ``MAX_ENTRIES``
entries (one per distinct profile: capability set and flags); the oldest go first.
It lives beside, not in, the runtime's ``--root`` (crun takes every directory there
for a container): ``common.endpoints.seccomp_cache_dir``.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import logging
import os
import stat
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

ANNOTATION = "run.oci.seccomp_bpf_data"
"""crun's annotation: base64 of the raw filter it loads instead of compiling ``linux.seccomp``."""

FAIL_UNKNOWN_SYSCALL = "run.oci.seccomp_fail_unknown_syscall"
"""crun's annotation that changes how it compiles (unknown syscall names fail): part of the key."""

RUNTIMES = frozenset({"crun"})
"""Basenames of the runtime binaries that read ``ANNOTATION`` (runc has no such thing)."""

MAGIC = b"dysc\x00\x00\x00\x01"
"""First 8 bytes of an entry (format version 1); a digest and the filter follow."""

BPF_INSN_SIZE = 8
"""``struct sock_filter``: u16 code, u8 jt, u8 jf, u32 k."""

MAX_FILTER_SIZE = 4096 * BPF_INSN_SIZE
"""``BPF_MAXINSNS``: the kernel refuses a longer classic BPF program."""

MAX_ENTRIES = 64
"""Entries kept in a cache directory; storing one more removes the oldest."""

STALE_TMP_S = 60.0
"""A temporary file older than this was left by a shim that died while storing."""

_BPF_RET = 0x06
_HEADER = len(MAGIC) + 32
_LIBSECCOMP = b"libseccomp.so.2"
_LDSO_CACHE = "/etc/ld.so.cache"
_LIB_DIRS = ("/lib64", "/usr/lib64", "/lib", "/usr/lib", "/usr/local/lib")


def check_filter(data: bytes) -> None:
    """Raise ``ValueError`` unless ``data`` can be a classic BPF seccomp filter.

    It must be non-empty, whole 8-byte instructions, at most ``MAX_FILTER_SIZE``
    bytes, and end with a ``BPF_RET`` instruction (the kernel's ``bpf_check_classic``
    refuses any other program).
    """
    if not data:
        raise ValueError("empty seccomp filter")
    if len(data) % BPF_INSN_SIZE:
        raise ValueError(f"seccomp filter of {len(data)} bytes is not whole {BPF_INSN_SIZE}-byte instructions")
    if len(data) > MAX_FILTER_SIZE:
        raise ValueError(f"seccomp filter of {len(data)} bytes is over {MAX_FILTER_SIZE}")
    code = int.from_bytes(data[-BPF_INSN_SIZE : -BPF_INSN_SIZE + 2], sys.byteorder)
    if code & 0x07 != _BPF_RET:
        raise ValueError("seccomp filter does not end with a return instruction")


def pack(data: bytes) -> bytes:
    """Return the cache entry of filter ``data``: ``MAGIC`` + sha256(data) + data.

    Raises ``ValueError`` if ``data`` fails ``check_filter``.
    """
    check_filter(data)
    return MAGIC + hashlib.sha256(data).digest() + data


def unpack(entry: bytes) -> bytes:
    """Return the filter in a cache entry; ``ValueError`` if the entry is damaged or invalid."""
    if entry[: len(MAGIC)] != MAGIC or len(entry) < _HEADER:
        raise ValueError("not a seccomp cache entry")
    data = entry[_HEADER:]
    if hashlib.sha256(data).digest() != entry[len(MAGIC) : _HEADER]:
        raise ValueError("seccomp cache entry fails its digest")
    check_filter(data)
    return data


def ldso_paths(soname: bytes = _LIBSECCOMP, cache_path: str = _LDSO_CACHE) -> tuple[str, ...]:
    """Paths the dynamic loader's cache maps ``soname`` to (every architecture's), sorted.

    glibc's ``ld.so.cache`` keeps each library's full path as a NUL-terminated string
    (the soname is its tail), so a scan for ``/<soname>\\0`` finds them without parsing
    the format. Without a cache (or no entry, e.g. musl), the files named ``soname`` in
    the usual library directories. Reads a few tens of KB: call it once (``_libseccomp``).
    """
    found: set[str] = set()
    try:
        with open(cache_path, "rb") as f:
            blob = f.read(16 * 1024 * 1024)
    except OSError:
        blob = b""
    needle = b"/" + soname + b"\0"
    at = blob.find(needle)
    while at >= 0:
        start = blob.rfind(b"\0", 0, at) + 1
        if blob[start : start + 1] == b"/":
            found.add(blob[start : at + len(needle) - 1].decode(errors="replace"))
        at = blob.find(needle, at + 1)
    if not found:
        name = soname.decode()
        found = {os.path.join(d, name) for d in _LIB_DIRS if os.path.exists(os.path.join(d, name))}
    return tuple(sorted(found))


@functools.cache
def _libseccomp() -> tuple[str, ...]:
    return ldso_paths()


@functools.cache
def _uname() -> tuple[str, str, str]:
    u = os.uname()  # a running kernel does not change: once per process
    return (u.release, u.version, u.machine)


def warm() -> None:
    """Find libseccomp and read uname now (the shim template calls it once, before forking)."""
    _libseccomp()
    _uname()


def _identity(path: str, st: os.stat_result) -> list[Any]:
    return [path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def file_identity(path: str) -> list[Any]:
    """``[path, st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns]`` of the file ``path`` names.

    ``stat`` follows symlinks, so a soname link switched to a new version changes it;
    ``ctime`` changes with any replacement, even one that keeps the mtime. A missing
    file is ``[path]``.
    """
    try:
        return _identity(path, os.stat(path))
    except OSError:
        return [path]


def find_program(name: str) -> tuple[str, os.stat_result] | None:
    """The file ``posix_spawnp`` runs for ``name`` and its ``stat``, or None.

    A name with a slash is a path; else the first regular file with an execute bit in
    the directories of ``PATH`` (the shim's: the reaper spawns the runtime from it). One
    ``stat`` per directory tried (``shutil.which`` takes three).
    """
    dirs = [""] if os.sep in name else (os.environ.get("PATH") or os.defpath).split(os.pathsep)
    for d in dirs:
        path = os.path.join(d, name) if d else name
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return path, st
    return None


def runtime_identity(binary: str) -> list[Any] | None:
    """Identity of the runtime ``binary`` (name in PATH or path) and of its libseccomp; None if not found."""
    found = find_program(binary)
    if found is None:
        return None
    return [_identity(*found), [file_identity(p) for p in _libseccomp()]]


def filter_key(identity: Any, seccomp: Mapping[str, Any], annotations: Mapping[str, Any]) -> str:
    """sha256 hex over everything crun's compiled filter depends on (see module docstring).

    ``identity``: ``runtime_identity``; ``seccomp``: the spec's ``linux.seccomp``;
    ``annotations``: the spec's (only ``FAIL_UNKNOWN_SYSCALL`` counts, as crun reads it:
    set and not "0").
    """
    fail_unknown = str(annotations.get(FAIL_UNKNOWN_SYSCALL, "0")) != "0"
    doc = {
        "v": 1,
        "runtime": identity,
        "uname": _uname(),
        "fail_unknown_syscall": fail_unknown,
        "seccomp": seccomp,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class Lookup:
    """One container's use of the cache: its key, and whether its spec got the cached filter."""

    key: str
    hit: bool


class SeccompCache:
    """The compiled filters of one runtime in one directory (see module docstring)."""

    def __init__(self, directory: str, runtime: str) -> None:
        self.directory = directory
        self.runtime = runtime

    @classmethod
    def for_runtime(cls, directory: str, runtime: str) -> SeccompCache | None:
        """The cache of ``runtime`` in ``directory``; None when ``directory`` is "" or the runtime is not crun."""
        if not directory or os.path.basename(runtime) not in RUNTIMES:
            return None
        return cls(directory, runtime)

    def path(self, key: str) -> str:
        return os.path.join(self.directory, key)

    def key(self, spec: Mapping[str, Any]) -> str | None:
        """The key of ``spec``'s filter; None when nothing is to be cached.

        Nothing is when the spec has no ``linux.seccomp`` (privileged, unconfined), when it
        already carries ``ANNOTATION`` (someone else's filter: crun stores that one, not
        a compilation of the section), when the process has ``noNewPrivileges`` (crun then
        loads the filter only as the process starts, after the runtime call returned: a
        filter the kernel refused would end the container instead of failing the create,
        where the shim drops the entry and compiles again), or when the runtime binary is
        not found.
        """
        seccomp = (spec.get("linux") or {}).get("seccomp")
        annotations = spec.get("annotations") or {}
        if not seccomp or ANNOTATION in annotations or (spec.get("process") or {}).get("noNewPrivileges"):
            return None
        identity = runtime_identity(self.runtime)
        if identity is None:
            return None
        return filter_key(identity, seccomp, annotations)

    def load(self, key: str) -> bytes | None:
        """The cached filter of ``key``, or None (no entry, or a damaged one: it is removed)."""
        try:
            with open(self.path(key), "rb") as f:
                entry = f.read(_HEADER + MAX_FILTER_SIZE + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("seccomp cache: cannot read %s: %s", self.path(key), exc)
            return None
        try:
            return unpack(entry)
        except ValueError as exc:
            log.warning("seccomp cache: dropping %s: %s", self.path(key), exc)
            self.drop(key)
            return None

    def annotate(self, spec: dict[str, Any]) -> Lookup | None:
        """Put the cached filter of ``spec`` into its annotations (a hit); None if not cacheable.

        Costs a ``stat`` of the runtime and of libseccomp, the key's hash over the
        section (~10 KB of JSON), and on a hit an open + read of one ~6 KB file.
        """
        key = self.key(spec)
        if key is None:
            return None
        data = self.load(key)
        if data is None:
            return Lookup(key, hit=False)
        spec.setdefault("annotations", {})[ANNOTATION] = base64.b64encode(data).decode("ascii")
        return Lookup(key, hit=True)

    def remember(self, lookup: Lookup | None, state_dir: str) -> None:
        """After a create that compiled (a miss): store ``<state_dir>/seccomp.bpf`` under its key.

        ``state_dir`` is the runtime's directory of the container (``<root>/<id>``). Never
        raises: a filter that cannot be read, fails ``check_filter`` or cannot be written
        is logged and not stored.
        """
        if lookup is None or lookup.hit:
            return
        try:
            with open(os.path.join(state_dir, "seccomp.bpf"), "rb") as f:
                data = f.read(MAX_FILTER_SIZE + 1)
            self.store(lookup.key, data)
        except (OSError, ValueError) as exc:
            log.warning("seccomp cache: not storing the filter of %s: %s", state_dir, exc)

    def store(self, key: str, data: bytes) -> None:
        """Write the entry of ``data`` under ``key`` (temporary file + rename), then evict.

        Raises ``ValueError`` (``check_filter``) or ``OSError``.
        """
        entry = pack(data)
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        tmp = os.path.join(self.directory, f".{key}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(entry)
            os.replace(tmp, self.path(key))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.evict()

    def drop(self, key: str) -> None:
        """Remove the entry of ``key`` (if any)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(key))

    def evict(self, keep: int = MAX_ENTRIES) -> list[str]:
        """Remove the oldest entries (by mtime) beyond ``keep``, and stale temporary files; return removed names."""
        entries: list[tuple[float, str]] = []
        removed = []
        now = time.time()
        try:
            with os.scandir(self.directory) as it:
                for e in it:
                    try:
                        mtime = e.stat(follow_symlinks=False).st_mtime
                    except OSError:
                        continue
                    if e.name.startswith("."):
                        if e.name.endswith(".tmp") and now - mtime > STALE_TMP_S:
                            removed.append(e.name)
                        continue
                    entries.append((mtime, e.name))
        except OSError:
            return []
        entries.sort()
        removed += [name for _, name in entries[: max(0, len(entries) - keep)]]
        for name in removed:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.directory, name))
        return removed


def is_seccomp_error(message: str) -> bool:
    """Whether a runtime error is about seccomp: crun's "invalid seccomp BPF data",
    "seccomp (SECCOMP_SET_MODE_FILTER): Invalid argument", "write to seccomp fd" (not its
    eBPF device-cgroup errors, which have nothing to do with the filter)."""
    return "seccomp" in message.lower()

"""The shim's cache of crun-compiled seccomp filters: its key, entry validation, bound."""

from __future__ import annotations

import copy
import os
import shutil
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from services.execution.seccomp import default_seccomp
from services.shim import seccomp_cache as sc
from services.shim.seccomp_cache import ANNOTATION, SeccompCache

DEFAULT_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_KILL", "CAP_SETUID", "CAP_SETGID"]


def insn(code: int, k: int = 0, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


RET_ALLOW = insn(0x06, 0x7FFF0000)  # BPF_RET | BPF_K, SECCOMP_RET_ALLOW
LD_NR = insn(0x20, 0)  # BPF_LD | BPF_W | BPF_ABS, seccomp_data.nr
FILTER = LD_NR * 3 + RET_ALLOW


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in ``crun`` binary and libseccomp in tmp_path, found through PATH and the memo."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    crun = bin_dir / "crun"
    crun.write_bytes(b"#!/bin/sh\n")
    crun.chmod(0o755)
    lib = tmp_path / "libseccomp.so.2"
    lib.write_bytes(b"\x7fELF v2.5.4")
    monkeypatch.setenv("PATH", f"{tmp_path / 'nothing'}:{bin_dir}")
    monkeypatch.setattr(sc, "_libseccomp", lambda: (str(lib),))
    return crun


def spec(caps: list[str] = DEFAULT_CAPS, **extra: Any) -> dict[str, Any]:
    return {"linux": {"seccomp": default_seccomp(caps)}, **extra}


def test_key_is_stable_for_equal_input(runtime: Path, tmp_path: Path) -> None:
    cache = SeccompCache(str(tmp_path / "cache"), "crun")
    a = spec()
    b = copy.deepcopy(a)
    b["linux"]["seccomp"] = dict(reversed(list(b["linux"]["seccomp"].items())))  # key order does not count
    assert cache.key(a) == cache.key(b)
    assert len(cache.key(a) or "") == 64
    # by path or by name in PATH: the same file
    assert SeccompCache(str(tmp_path / "cache"), str(runtime)).key(a) == cache.key(a)


def test_key_changes_with_the_profile_and_its_flags(runtime: Path, tmp_path: Path) -> None:
    cache = SeccompCache(str(tmp_path / "cache"), "crun")
    base = cache.key(spec())
    assert cache.key(spec([*DEFAULT_CAPS, "CAP_SYS_ADMIN"])) != base  # cap rules add syscalls
    flagged = spec()
    flagged["linux"]["seccomp"]["flags"] = ["SECCOMP_FILTER_FLAG_LOG"]
    assert cache.key(flagged) != base
    fewer = spec()
    fewer["linux"]["seccomp"]["syscalls"] = fewer["linux"]["seccomp"]["syscalls"][1:]
    assert cache.key(fewer) != base
    # crun's compile option; another annotation does not count
    assert cache.key(spec(annotations={sc.FAIL_UNKNOWN_SYSCALL: "1"})) != base
    assert cache.key(spec(annotations={sc.FAIL_UNKNOWN_SYSCALL: "0"})) == base
    assert cache.key(spec(annotations={"org.example": "x"})) == base


def test_key_changes_with_the_runtime_and_libseccomp(runtime: Path, tmp_path: Path) -> None:
    cache = SeccompCache(str(tmp_path / "cache"), "crun")
    base = cache.key(spec())
    st = runtime.stat()
    os.utime(runtime, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a new build, same size
    upgraded = cache.key(spec())
    assert upgraded != base
    # replaced by a copy that keeps the old mtime (cp -p): the inode and ctime tell
    new = runtime.with_name("crun.new")
    shutil.copy2(runtime, new)
    os.replace(new, runtime)
    assert cache.key(spec()) != upgraded
    before_lib = cache.key(spec())
    lib = tmp_path / "libseccomp.so.2"
    lib.write_bytes(b"\x7fELF v2.5.5 and longer")
    assert cache.key(spec()) != before_lib


def test_nothing_to_cache(runtime: Path, tmp_path: Path) -> None:
    cache = SeccompCache(str(tmp_path / "cache"), "crun")
    assert cache.key({"linux": {}}) is None  # --privileged, seccomp=unconfined
    assert cache.key({}) is None
    assert cache.key(spec(annotations={ANNOTATION: "AAAA"})) is None  # someone else's filter
    nnp = {**spec(), "process": {"noNewPrivileges": True}}
    assert cache.key(nnp) is None  # crun loads it at the exec: no retry could catch a refusal
    assert SeccompCache(str(tmp_path / "cache"), "no-such-runtime").key(spec()) is None
    s = {"linux": {}}
    assert cache.annotate(s) is None and "annotations" not in s


def test_only_crun_with_a_directory_has_a_cache(tmp_path: Path) -> None:
    assert SeccompCache.for_runtime(str(tmp_path), "runc") is None
    assert SeccompCache.for_runtime("", "crun") is None
    assert SeccompCache.for_runtime(str(tmp_path), "/usr/bin/crun") is not None


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "empty"),
        (b"\x06\x00\x00\x00\x00", "whole"),
        (FILTER[:-4], "whole"),
        (RET_ALLOW * (4096 + 1), "over"),
        (RET_ALLOW + LD_NR, "return"),
    ],
)
def test_check_filter_rejects(data: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        sc.check_filter(data)


def test_check_filter_accepts_a_filter_up_to_the_kernel_limit() -> None:
    sc.check_filter(FILTER)
    sc.check_filter(RET_ALLOW * 4096)


def test_entries_carry_a_digest() -> None:
    entry = sc.pack(FILTER)
    assert sc.unpack(entry) == FILTER
    flipped = bytearray(entry)
    flipped[-3] ^= 0x01
    for damaged in (bytes(flipped), entry[:-8], entry[:5], b"\x00" * 16, sc.MAGIC + b"\x00" * 32 + FILTER):
        with pytest.raises(ValueError):
            sc.unpack(damaged)
    with pytest.raises(ValueError):
        sc.pack(FILTER + b"\x00")


def test_store_then_annotate(runtime: Path, tmp_path: Path) -> None:
    cache = SeccompCache(str(tmp_path / "cache"), "crun")
    s = spec()
    lookup = cache.annotate(s)
    assert lookup is not None and not lookup.hit and "annotations" not in s
    cache.store(lookup.key, FILTER)
    assert os.listdir(cache.directory) == [lookup.key]
    assert (os.stat(cache.directory).st_mode & 0o777) == 0o700
    s2 = spec(annotations={"org.example": "x"})
    lookup2 = cache.annotate(s2)
    assert lookup2 is not None and lookup2.hit and lookup2.key == lookup.key
    import base64

    assert base64.b64decode(s2["annotations"][ANNOTATION]) == FILTER
    assert s2["annotations"]["org.example"] == "x"
    assert "seccomp" in s2["linux"]  # the section stays: crun still applies its flags


@pytest.mark.parametrize("content", [b"", b"\x06\x00\x00\x00\x00", os.urandom(16), b"seccomp!" * 2])
def test_a_damaged_entry_is_a_miss_and_is_removed(runtime: Path, tmp_path: Path, content: bytes) -> None:
    cache = SeccompCache(str(tmp_path / "cache"), "crun")
    key = cache.key(spec())
    assert key is not None
    cache.store(key, FILTER)
    Path(cache.path(key)).write_bytes(content)
    s = spec()
    lookup = cache.annotate(s)
    assert lookup is not None and not lookup.hit and "annotations" not in s
    assert not os.path.exists(cache.path(key))


def test_remember_stores_what_crun_wrote_only_if_valid(runtime: Path, tmp_path: Path) -> None:
    cache = SeccompCache(str(tmp_path / "cache"), "crun")
    state = tmp_path / "state"
    state.mkdir()
    lookup = cache.annotate(spec())
    assert lookup is not None
    cache.remember(lookup, str(state))  # no seccomp.bpf: logged, nothing stored, no error
    assert not os.path.exists(cache.path(lookup.key))
    (state / "seccomp.bpf").write_bytes(FILTER[:-3])
    cache.remember(lookup, str(state))
    assert not os.path.exists(cache.path(lookup.key))
    (state / "seccomp.bpf").write_bytes(FILTER)
    cache.remember(lookup, str(state))
    assert cache.load(lookup.key) == FILTER
    assert [n for n in os.listdir(cache.directory) if n.startswith(".")] == []  # no temporary left


def test_eviction_keeps_the_newest(tmp_path: Path) -> None:
    cache = SeccompCache(str(tmp_path / "cache"), "crun")
    now = time.time()
    for i in range(sc.MAX_ENTRIES):
        cache.store(f"{i:064x}", FILTER)
        os.utime(cache.path(f"{i:064x}"), (now - 1000 + i, now - 1000 + i))
    stale = Path(cache.directory, f".{'f' * 64}.123.tmp")
    stale.write_bytes(b"x")
    os.utime(stale, (now - 2 * sc.STALE_TMP_S, now - 2 * sc.STALE_TMP_S))
    fresh = Path(cache.directory, f".{'e' * 64}.124.tmp")  # another shim storing right now
    fresh.write_bytes(b"x")
    cache.store("a" * 64, FILTER)  # one more than the bound
    names = set(os.listdir(cache.directory))
    assert f"{0:064x}" not in names and f"{1:064x}" in names and "a" * 64 in names
    assert len([n for n in names if not n.startswith(".")]) == sc.MAX_ENTRIES
    assert not stale.exists() and fresh.exists()


def test_ldso_paths_reads_the_loader_cache(tmp_path: Path) -> None:
    blob = (
        b"glibc-ld.so.cache1.1\x00junk\x00/lib/x86_64-linux-gnu/libseccomp.so.2\x00"
        b"/lib/i386-linux-gnu/libseccomp.so.2\x00/lib/x86_64-linux-gnu/libseccomp.so.2.5.4\x00"
        b"/usr/lib/libseccomp.so.20\x00"
    )
    cache = tmp_path / "ld.so.cache"
    cache.write_bytes(blob)
    assert sc.ldso_paths(cache_path=str(cache)) == (
        "/lib/i386-linux-gnu/libseccomp.so.2",
        "/lib/x86_64-linux-gnu/libseccomp.so.2",
    )
    assert sc.ldso_paths(b"libnosuch.so.9", cache_path=str(cache)) == ()


def test_is_seccomp_error() -> None:
    assert sc.is_seccomp_error("invalid seccomp BPF data")
    assert sc.is_seccomp_error("seccomp (SECCOMP_SET_MODE_FILTER): Invalid argument")
    assert not sc.is_seccomp_error("executable file `x` not found in $PATH: No such file or directory")
    assert not sc.is_seccomp_error("bpf create program: Operation not permitted")  # crun's device cgroup

"""The default seccomp profile, turned into an OCI ``linux.seccomp`` for one container.

``seccomp_default.json`` is the default profile of containers/common (Apache-2.0,
as shipped by Debian in ``/usr/share/containers/seccomp.json``), itself derived from
Docker's ``profiles/seccomp/default.json``, in the same format: a default action
(errno ENOSYS here, so programs probing new syscalls fall back), the allowed syscall
list, and rules that apply only on some architectures (``includes.arches``) or only
with (``includes.caps``) or without (``excludes.caps``) a capability. Like Docker, we
keep the rules that apply to the host architecture and to the container's capability
set, so ``--cap-add SYS_ADMIN`` also allows ``mount``-family syscalls that need it.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_ARCH_NAMES = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "i686": "x86",
    "s390x": "s390x",
    "ppc64le": "ppc64le",
}
_SCMP_ARCH = {
    "amd64": "SCMP_ARCH_X86_64",
    "arm64": "SCMP_ARCH_AARCH64",
    "arm": "SCMP_ARCH_ARM",
    "x86": "SCMP_ARCH_X86",
    "s390x": "SCMP_ARCH_S390X",
    "ppc64le": "SCMP_ARCH_PPC64LE",
}


_X32_SYSCALL_BIT = 0x40000000
_NR_GETPID_X86_64 = 39


@functools.cache
def host_has_x32_abi() -> bool:
    """Whether this x86_64 kernel runs x32 syscalls (``CONFIG_X86_X32_ABI``, off in Debian's).

    Probes ``getpid`` with ``__X32_SYSCALL_BIT`` set: a kernel without the x32 ABI answers
    ``ENOSYS``. Filtering an ABI the kernel refuses protects nothing and costs the runtime
    a third of its seccomp compilation (~8 ms of each ``runc create`` and ``runc exec`` here).
    """
    if platform.machine() != "x86_64":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ctypes.set_errno(0)
    ret = libc.syscall(ctypes.c_long(_X32_SYSCALL_BIT | _NR_GETPID_X86_64))
    return not (ret == -1 and ctypes.get_errno() == errno.ENOSYS)


@functools.cache
def _profile() -> dict[str, Any]:
    return dict(json.loads((Path(__file__).parent / "seccomp_default.json").read_text()))


def _kernel_at_least(version: str) -> bool:
    want = [int(x) for x in version.split(".")[:2]]
    have = [int("".join(c for c in x if c.isdigit()) or 0) for x in os.uname().release.split(".")[:2]]
    return have >= want


def default_seccomp(caps: Sequence[str], arch: str | None = None) -> dict[str, Any]:
    """OCI ``linux.seccomp`` for a container with capabilities ``caps`` on ``arch`` (Go names).

    ``architectures`` is the profile's ``archMap`` entry for ``arch`` (the native one and its
    sub-architectures, as Docker does), less ``SCMP_ARCH_X32`` when ``arch`` is this host's
    and its kernel has no x32 ABI (``host_has_x32_abi``): such syscalls fail with ``ENOSYS``
    before any filter sees them.
    """
    prof = _profile()
    host = _ARCH_NAMES.get(platform.machine(), platform.machine())
    arch = arch or host
    native = _SCMP_ARCH.get(arch, "")
    architectures: list[str] = []
    for entry in prof.get("archMap") or []:
        if entry["architecture"] == native:
            architectures = [entry["architecture"], *entry.get("subArchitectures", [])]
    if arch == host == "amd64" and not host_has_x32_abi():
        architectures = [a for a in architectures if a != "SCMP_ARCH_X32"]
    have = set(caps)
    syscalls = []
    for rule in prof["syscalls"]:
        inc = rule.get("includes") or {}
        exc = rule.get("excludes") or {}
        if inc.get("arches") and arch not in inc["arches"]:
            continue
        if exc.get("arches") and arch in exc["arches"]:
            continue
        if inc.get("caps") and not all(c in have for c in inc["caps"]):
            continue
        if exc.get("caps") and any(c in have for c in exc["caps"]):
            continue
        if inc.get("minKernel") and not _kernel_at_least(inc["minKernel"]):
            continue
        out: dict[str, Any] = {"names": list(rule["names"]), "action": rule["action"]}
        if rule.get("args"):
            out["args"] = [
                {"index": a["index"], "value": a["value"], "valueTwo": a.get("valueTwo", 0), "op": a["op"]}
                for a in rule["args"]
            ]
        if rule.get("errnoRet") is not None:
            out["errnoRet"] = rule["errnoRet"]
        syscalls.append(out)
    seccomp: dict[str, Any] = {
        "defaultAction": prof["defaultAction"],
        "architectures": architectures,
        "syscalls": syscalls,
    }
    if prof.get("defaultErrnoRet") is not None:
        seccomp["defaultErrnoRet"] = prof["defaultErrnoRet"]
    return seccomp

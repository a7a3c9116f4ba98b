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


@functools.cache
def _profile() -> dict[str, Any]:
    return dict(json.loads((Path(__file__).parent / "seccomp_default.json").read_text()))


def _kernel_at_least(version: str) -> bool:
    want = [int(x) for x in version.split(".")[:2]]
    have = [int("".join(c for c in x if c.isdigit()) or 0) for x in os.uname().release.split(".")[:2]]
    return have >= want


def default_seccomp(caps: Sequence[str], arch: str | None = None) -> dict[str, Any]:
    """OCI ``linux.seccomp`` for a container with capabilities ``caps`` on ``arch`` (Go names)."""
    prof = _profile()
    arch = arch or _ARCH_NAMES.get(platform.machine(), platform.machine())
    native = _SCMP_ARCH.get(arch, "")
    architectures: list[str] = []
    for entry in prof.get("archMap") or []:
        if entry["architecture"] == native:
            architectures = [entry["architecture"], *entry.get("subArchitectures", [])]
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

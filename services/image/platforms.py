"""Platforms: parsing, normalisation and choosing a manifest from an index (CASES.md C12).

Normalisation (containerd ``platforms``): ``x86_64``/``x86-64`` -> ``amd64``, ``aarch64`` ->
``arm64``, ``armhf`` -> ``arm/v7``, ``armel`` -> ``arm/v6``, ``i386``/``i686`` -> ``386``;
arm64 without variant means ``v8``, arm without variant ``v7``; variants ``7`` -> ``v7``.

Matching: the OS and architecture must match; for arm the exact variant ranks first, then
compatible lower variants in descending order (a v7 host takes v7 > v6 > v5, a v6 host
v6 > v5, never v7); an arm64 host also runs 32-bit arm (ranked after arm64). Entries
with another OS, an unknown platform (attestation manifests) or a non-manifest media type
are ignored. The choice does not depend on the order of the index entries (ties keep the
first). No candidate -> NotFound naming the wanted platform and listing what is there.
"""

from __future__ import annotations

import functools
import os

from common.errors import InvalidArgument, NotFound
from services.image.oci import MANIFEST_TYPES, Descriptor, Platform

_KNOWN_OS = {
    "linux",
    "windows",
    "darwin",
    "freebsd",
    "netbsd",
    "openbsd",
    "solaris",
    "illumos",
    "aix",
    "android",
    "ios",
    "js",
    "wasip1",
    "plan9",
    "dragonfly",
}
_ARM_ORDER = ["v5", "v6", "v7", "v8"]


def normalize(p: Platform) -> Platform:
    """Return ``p`` with the OS, architecture and variant spelled the canonical way."""
    os_name = (p.os or "").lower()
    if os_name == "macos":
        os_name = "darwin"
    arch = (p.architecture or "").lower()
    variant = (p.variant or "").lower()
    if arch in ("i386", "i486", "i586", "i686"):
        arch, variant = "386", ""
    elif arch in ("x86_64", "x86-64", "amd64"):
        arch = "amd64"
        if variant == "v1":
            variant = ""
    elif arch in ("aarch64", "arm64"):
        arch = "arm64"
        if variant in ("8", "v8", ""):
            variant = "v8"
    elif arch == "armhf":
        arch, variant = "arm", "v7"
    elif arch == "armel":
        arch, variant = "arm", "v6"
    elif arch == "arm":
        if variant in ("", "7"):
            variant = "v7"
        elif variant in ("5", "6", "8"):
            variant = "v" + variant
    return Platform(os_name, arch, variant, p.os_version, p.os_features)


def display(p: Platform) -> str:
    """``os/arch[/variant]`` without the implied arm64 ``v8``."""
    n = normalize(p)
    if n.architecture == "arm64" and n.variant == "v8":
        return f"{n.os}/arm64"
    return str(n)


@functools.lru_cache(maxsize=1)
def host() -> Platform:
    """The platform of this machine (linux, architecture from uname, arm variant from /proc/cpuinfo)."""
    machine = os.uname().machine
    variant = ""
    if machine.startswith("armv"):
        variant = "v" + machine[4]
        machine = "arm"
    elif machine == "arm":
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.lower().startswith("cpu architecture"):
                        variant = "v" + line.split(":", 1)[1].strip()[:1]
                        break
        except OSError:
            pass
    return normalize(Platform("linux", machine, variant))


def parse(text: str) -> Platform:
    """Parse ``os[/arch[/variant]]`` or a bare ``arch`` (OS linux); InvalidArgument if malformed."""
    parts = text.strip().split("/")
    if not text.strip() or any(not part for part in parts) or len(parts) > 3:
        raise InvalidArgument(f"invalid platform {text!r}: expected os/arch[/variant], e.g. linux/amd64")
    if len(parts) == 1:
        if parts[0].lower() in _KNOWN_OS:
            h = host()
            return normalize(Platform(parts[0], h.architecture, h.variant))
        return normalize(Platform("linux", parts[0]))
    return normalize(Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else ""))


def rank(want: Platform, have: Platform | None) -> int | None:
    """Rank of ``have`` for a host ``want`` (0 = best), None when it cannot run there."""
    if have is None:
        return None
    w, h = normalize(want), normalize(have)
    if not h.os or not h.architecture or h.os != w.os:
        return None
    if w.architecture == h.architecture:
        if w.architecture not in ("arm", "arm64"):
            if w.variant and h.variant and w.variant != h.variant:
                # amd64 micro-architecture levels: a higher level host runs lower-level images
                if w.architecture == "amd64" and h.variant < w.variant:
                    return 1
                return None
            return 0
        if w.architecture == "arm64":
            return 0 if h.variant in ("v8", "") or h.variant == w.variant else None
        if h.variant not in _ARM_ORDER or w.variant not in _ARM_ORDER:
            return 0 if h.variant == w.variant else None
        diff = _ARM_ORDER.index(w.variant) - _ARM_ORDER.index(h.variant)
        return diff if diff >= 0 else None
    if w.architecture == "arm64" and h.architecture == "arm" and h.variant in _ARM_ORDER:
        return 10 + (_ARM_ORDER.index("v8") - _ARM_ORDER.index(h.variant))
    return None


def choose(entries: list[Descriptor], want: Platform | None = None, where: str = "") -> Descriptor:
    """Pick the best manifest of an index for ``want`` (default: the host).

    Raises NotFound: ``no matching manifest for linux/s390x in the manifest list entries
    (available: linux/amd64, linux/arm/v7)``.
    """
    want = normalize(want or host())
    best: tuple[int, int] | None = None
    chosen: Descriptor | None = None
    for position, desc in enumerate(entries):
        if desc.media_type not in MANIFEST_TYPES:
            continue
        r = rank(want, desc.platform)
        if r is None:
            continue
        key = (r, position)
        if best is None or key < best:
            best, chosen = key, desc
    if chosen is None:
        available = sorted(
            {
                display(d.platform)
                for d in entries
                if d.platform is not None
                and d.platform.os
                and d.platform.architecture
                and d.platform.os != "unknown"
                and d.media_type in MANIFEST_TYPES
            }
        )
        listing = ", ".join(available) if available else "none"
        suffix = f" of {where}" if where else ""
        raise NotFound(
            f"no matching manifest for {display(want)} in the manifest list entries{suffix} (available: {listing})"
        )
    return chosen


def matches(want: Platform, have: Platform) -> bool:
    """True when an image built for ``have`` runs on ``want``."""
    return rank(want, have) is not None

"""Building a container's OCI runtime spec (``config.json``) the way Docker does.

Pure functions, no I/O except reading host facts passed in: unit-tested without root.

- argv (CASES.md C14): (override entrypoint if given, else the image's Entrypoint) +
  (override command if given; else the image's Cmd, but only when the entrypoint was not
  overridden). ``--entrypoint ""`` means no entrypoint. An empty result is refused
  (``no command specified``).
- Env: entries split at the first ``=`` only; an entry without ``=`` removes the key.
  The container's ``Config.Env`` (what inspect shows, moby ``daemon/commit.go`` ``merge``) is
  the request's entries, then the image's whose key the request does not set. The
  process's environment (moby ``CreateDaemonEnvironment``) is ``PATH`` (the default),
  ``HOSTNAME=<hostname>`` and, with a terminal, ``TERM=xterm``, each replaced in place
  by ``Config.Env`` (later duplicates win), the rest appended; an exec's adds its own
  entries last and gets ``TERM`` by its own terminal.
- Docker's defaults (moby ``oci/defaults.go``): the mounts (/proc, /dev, /dev/pts,
  /dev/shm, /dev/mqueue, /sys ro, /sys/fs/cgroup ro), the namespaces, the 14 default
  capabilities, masked and read-only /proc paths, device cgroup rules, no rlimits (a
  host quirk: the spec must stay within the hard limits, so we inherit them), cgroups
  under ``/dockyard/<id>``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from common.errors import InvalidArgument

OCI_VERSION = "1.0.2"

DEFAULT_CAPS = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)
"""Docker's default capability set (moby ``oci/caps/defaults.go``)."""

ALL_CAPS = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
"""Every capability, in kernel bit order (bit n = ALL_CAPS[n])."""

MASKED_PATHS = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_DEVICE_RULES = [
    {"allow": False, "access": "rwm"},
    {"allow": True, "type": "c", "access": "m"},  # no major/minor = any (crun refuses -1)
    {"allow": True, "type": "b", "access": "m"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},  # /dev/null
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},  # /dev/random
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},  # /dev/full
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},  # /dev/tty
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},  # /dev/zero
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},  # /dev/urandom
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},  # /dev/pts/*
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},  # /dev/ptmx
]


# -- argv, env ---------------------------------------------------------------------------------
def process_args(
    image_config: Mapping[str, Any], entrypoint: Sequence[str] | None, cmd: Sequence[str] | None
) -> list[str]:
    """Docker's argv rule (module docstring); raises InvalidArgument when nothing is left to run."""
    if entrypoint is not None:
        ep = [] if list(entrypoint) in ([], [""]) else list(entrypoint)
        args = ep + (list(cmd) if cmd else [])
    else:
        ep = list(image_config.get("Entrypoint") or [])
        args = ep + (list(cmd) if cmd else list(image_config.get("Cmd") or []))
    if not args:
        raise InvalidArgument("no command specified")
    return args


def _env_key(entry: str) -> str:
    return entry.split("=", 1)[0]


def merge_env(image_env: Iterable[str], request_env: Iterable[str]) -> list[str]:
    """Merge env lists (module docstring): order kept, later keys replace earlier ones."""
    merged: dict[str, str] = {}
    for entry in list(image_env or []) + list(request_env or []):
        if not entry:
            continue
        key = _env_key(entry)
        if not key:
            raise InvalidArgument(f"invalid environment variable {entry!r}: empty name")
        if "=" not in entry:
            merged.pop(key, None)
            continue
        merged[key] = entry
    if "PATH" not in merged:
        merged = {"PATH": f"PATH={DEFAULT_PATH}", **merged}
    return list(merged.values())


def config_env(image_env: Iterable[str], request_env: Iterable[str]) -> list[str]:
    """Docker's ``Config.Env`` (module docstring): the request's entries as given, then the
    image's entries whose key the request does not name. No defaults are added."""
    user = [e for e in request_env or [] if e]
    named = {_env_key(e) for e in user}
    return user + [e for e in image_env or [] if e and _env_key(e) not in named]


def process_env(env: Iterable[str], *, hostname: str, tty: bool) -> list[str]:
    """The environment a container's process (or an exec) runs with, from its ``Config.Env``
    (plus an exec's own entries after it): Docker's ``CreateDaemonEnvironment``, see the
    module docstring. InvalidArgument for an entry with an empty name."""
    defaults = [f"PATH={DEFAULT_PATH}", f"HOSTNAME={hostname}"]
    if tty:
        defaults.append("TERM=xterm")
    return merge_env(defaults, env)


# -- signals, capabilities ---------------------------------------------------------------------------
def parse_signal(value: str | int | None, default: int = signal.SIGTERM) -> int:
    """``SIGTERM``, ``TERM``, ``term`` or ``15`` -> 15; InvalidArgument otherwise."""
    if value is None or value == "":
        return int(default)
    if isinstance(value, int) or str(value).isdigit():
        n = int(value)
        if not 1 <= n <= 64:
            raise InvalidArgument(f"invalid signal {value!r}")
        return n
    name = str(value).upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        if name.startswith("SIGRTMIN+") and name[9:].isdigit():
            return int(signal.SIGRTMIN) + int(name[9:])
        raise InvalidArgument(f"invalid signal {value!r}") from None


def _cap_name(value: str) -> str:
    name = value.strip().upper()
    if name == "ALL":
        return name
    if not name.startswith("CAP_"):
        name = "CAP_" + name
    if name not in ALL_CAPS:
        raise InvalidArgument(f"unknown capability {value!r}")
    return name


def host_capabilities(cap_bnd: int | None = None) -> list[str]:
    """Capabilities in this process's bounding set (a container cannot get more)."""
    if cap_bnd is None:
        cap_bnd = (1 << len(ALL_CAPS)) - 1
        try:
            with open("/proc/self/status", encoding="utf-8") as f:
                for line in f:
                    if line.startswith("CapBnd:"):
                        cap_bnd = int(line.split()[1], 16)
        except OSError:
            pass
    return [c for i, c in enumerate(ALL_CAPS) if cap_bnd >> i & 1]


def capabilities(
    cap_add: Sequence[str], cap_drop: Sequence[str], privileged: bool, available: Sequence[str]
) -> list[str]:
    """Docker's capability arithmetic: defaults (or all if privileged) + add - drop.

    ``ALL`` works in both lists; an add of a capability the host does not have is an error.
    """
    add = [_cap_name(c) for c in cap_add]
    drop = [_cap_name(c) for c in cap_drop]
    if privileged:
        return list(available)
    caps = list(DEFAULT_CAPS)
    if "ALL" in drop:
        caps = []
    if "ALL" in add:
        caps = list(available)
    for c in add:
        if c == "ALL":
            continue
        if c not in available:
            raise InvalidArgument(f"capability {c} is not available on this host")
        if c not in caps:
            caps.append(c)
    caps = [c for c in caps if c not in drop]
    return [c for c in caps if c in available]


# -- mounts ----------------------------------------------------------------------------------------------
def default_mounts(read_only_sys: bool = True, cgroup_ns: bool = False) -> list[dict[str, Any]]:
    """Docker's default mounts (moby ``oci/defaults.go``)."""
    return [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro" if read_only_sys else "rw"],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["ro", "nosuid", "noexec", "nodev"],
        },
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
    ]


def user_mounts(mounts: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OCI mounts for resolved user mounts ``{type: bind|tmpfs, source, target, read_only, options}``.

    Bind and volume sources must already be host paths. Sorted by target depth so a
    parent is mounted before what is mounted inside it.
    """
    out: list[dict[str, Any]] = []
    for m in mounts:
        target = str(m["target"])
        if not target.startswith("/"):
            raise InvalidArgument(f"invalid mount target {target!r}: must be an absolute path")
        if m["type"] == "tmpfs":
            opts = ["nosuid", "nodev", "noexec"]
            extra = list(m.get("options") or [])
            if not any(o.startswith("mode=") for o in extra):
                extra.append("mode=1777")
            opts += extra
            if m.get("read_only"):
                opts.append("ro")
            out.append({"destination": target, "type": "tmpfs", "source": "tmpfs", "options": opts})
        else:
            opts = ["rbind", "ro" if m.get("read_only") else "rw", "rprivate"]
            out.append({"destination": target, "type": "bind", "source": str(m["source"]), "options": opts})
    out.sort(key=lambda x: os.path.normpath(str(x["destination"])).count("/"))
    return out


# -- resources -------------------------------------------------------------------------------------------
def linux_resources(res: Mapping[str, Any], *, swap_accounting: bool = True) -> dict[str, Any]:
    """OCI ``LinuxResources`` for Docker's flags (--memory, --memory-swap, --cpus, ...).

    Docker's rule: with --memory and no --memory-swap, memory+swap is twice the memory;
    ``memory_swap=-1`` is unlimited swap. Without swap accounting the swap limit is left out.
    """
    out: dict[str, Any] = {}
    mem = res.get("memory")
    swap = res.get("memory_swap")
    if mem:
        if mem < 6 * 1024 * 1024:
            raise InvalidArgument("minimum memory limit allowed is 6MB")
        memory: dict[str, Any] = {"limit": int(mem)}
        if swap_accounting:
            if swap is None or swap == 0:
                memory["swap"] = int(mem) * 2
            elif swap == -1:
                memory["swap"] = -1
            else:
                if swap < mem:
                    raise InvalidArgument("minimum memoryswap limit should be larger than memory limit")
                memory["swap"] = int(swap)
        out["memory"] = memory
    elif swap not in (None, 0, -1):
        raise InvalidArgument("you should always set the memory limit when using the memoryswap limit")
    cpu: dict[str, Any] = {}
    if res.get("nano_cpus"):
        period = 100_000
        cpu["period"] = period
        cpu["quota"] = int(res["nano_cpus"]) * period // 1_000_000_000
        if cpu["quota"] < 1000:
            raise InvalidArgument("range of CPUs is from 0.01 to the number of CPUs available")
    if res.get("cpu_period"):
        cpu["period"] = int(res["cpu_period"])
    if res.get("cpu_quota"):
        cpu["quota"] = int(res["cpu_quota"])
    if res.get("cpu_shares"):
        cpu["shares"] = int(res["cpu_shares"])
    if res.get("cpuset_cpus"):
        cpu["cpus"] = str(res["cpuset_cpus"])
    if cpu:
        out["cpu"] = cpu
    pids = res.get("pids_limit")
    if pids is not None:
        out["pids"] = {"limit": int(pids) if pids > 0 else -1}
    return out


# -- the spec --------------------------------------------------------------------------------------------------
def build_spec(
    *,
    container_id: str,
    args: Sequence[str],
    env: Sequence[str],
    cwd: str,
    hostname: str,
    domainname: str = "",
    tty: bool = False,
    open_stdin: bool = False,
    network_mode: str = "none",
    read_only: bool = False,
    caps: Sequence[str] = DEFAULT_CAPS,
    privileged: bool = False,
    no_new_privileges: bool = False,
    seccomp: Mapping[str, Any] | None = None,
    mounts: Sequence[Mapping[str, Any]] = (),
    etc_files: Mapping[str, str] | None = None,
    resources: Mapping[str, Any] | None = None,
    cgroup_v2: bool = False,
    console_size: tuple[int, int] | None = None,
    annotations: Mapping[str, str] | None = None,
    devices: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Return the ``config.json`` of a container (OCI runtime-spec v1.0.2).

    ``etc_files`` maps ``/etc/hostname``, ``/etc/hosts``, ``/etc/resolv.conf`` to host
    files bind-mounted over them (unless a user mount targets the same path). The user
    is left as root here: the shim resolves ``User`` inside the mounted rootfs (C15).
    """
    if network_mode not in ("none", "host", "bridge", "default", ""):
        raise InvalidArgument(f"network mode {network_mode!r} is not supported (use none or host)")
    namespaces = [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
    if network_mode != "host":
        namespaces.append({"type": "network"})
    if cgroup_v2:
        namespaces.append({"type": "cgroup"})
    spec_mounts = default_mounts(read_only_sys=not privileged, cgroup_ns=cgroup_v2)
    user = user_mounts(mounts)
    targets = {os.path.normpath(m["destination"]) for m in user}
    # a user mount over a default one (e.g. --tmpfs /dev/shm) replaces it
    spec_mounts = [m for m in spec_mounts if m["destination"] not in targets]
    spec_mounts += user
    for dest, source in (etc_files or {}).items():
        if dest not in targets:
            spec_mounts.append(
                {"destination": dest, "type": "bind", "source": source, "options": ["rbind", "rprivate"]}
            )
    cap_list = list(caps)
    process: dict[str, Any] = {
        "terminal": tty,
        "user": {"uid": 0, "gid": 0},
        "args": list(args),
        "env": list(env),
        "cwd": cwd or "/",
        "capabilities": {
            "bounding": cap_list,
            "effective": cap_list,
            "permitted": cap_list,
        },
        "noNewPrivileges": no_new_privileges,
        "oomScoreAdj": 0,
    }
    if tty and console_size and console_size[0] and console_size[1]:
        process["consoleSize"] = {"height": console_size[0], "width": console_size[1]}
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "cgroupsPath": f"/dockyard/{container_id}",
        "resources": {"devices": [] if privileged else [dict(r) for r in _DEVICE_RULES], **dict(resources or {})},
    }
    if privileged:
        linux["resources"]["devices"] = [{"allow": True, "access": "rwm"}]
        if devices:
            linux["devices"] = [dict(d) for d in devices]
    else:
        linux["maskedPaths"] = list(MASKED_PATHS)
        linux["readonlyPaths"] = list(READONLY_PATHS)
        if seccomp:
            linux["seccomp"] = dict(seccomp)
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": "rootfs", "readonly": bool(read_only)},
        "hostname": hostname,
        "mounts": spec_mounts,
        "linux": linux,
    }
    if domainname:
        spec["domainname"] = domainname
    if annotations:
        spec["annotations"] = dict(annotations)
    return spec


def hosts_file(hostname: str, network_mode: str, host_hosts: str | None = None) -> str:
    """Content of the container's /etc/hosts (Docker's for none; the host's for host networking)."""
    if network_mode == "host" and host_hosts is not None:
        return host_hosts
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "ff00::0\tip6-mcastprefix",
        "ff02::1\tip6-allnodes",
        "ff02::2\tip6-allrouters",
    ]
    if hostname:
        lines.append(f"127.0.1.1\t{hostname}")
    return "\n".join(lines) + "\n"


def resolv_conf(host_resolv: str | None, network_mode: str) -> str:
    """The container's /etc/resolv.conf: the host's, without loopback nameservers unless host networking."""
    text = host_resolv or ""
    if network_mode == "host":
        return text
    kept = []
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] == ["nameserver"] and len(parts) > 1 and (parts[1].startswith("127.") or parts[1] == "::1"):
            continue
        kept.append(line)
    return "\n".join(kept) + ("\n" if kept else "")


def host_devices(root: str = "/dev") -> list[dict[str, Any]]:
    """Every device node of the host (``--privileged`` gets them all, as in Docker)."""
    import stat as stat_mod

    out: list[dict[str, Any]] = []
    skip = {"/dev/pts", "/dev/shm", "/dev/mqueue", "/dev/fd", "/dev/console", "/dev/ptmx", "/dev/tty"}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        for name in filenames:
            path = os.path.join(dirpath, name)
            if path in skip:
                continue
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat_mod.S_ISCHR(st.st_mode):
                kind = "c"
            elif stat_mod.S_ISBLK(st.st_mode):
                kind = "b"
            else:
                continue
            out.append(
                {
                    "path": path,
                    "type": kind,
                    "major": os.major(st.st_rdev),
                    "minor": os.minor(st.st_rdev),
                    "fileMode": stat_mod.S_IMODE(st.st_mode),
                    "uid": st.st_uid,
                    "gid": st.st_gid,
                }
            )
    return out


INIT_CANDIDATES = (
    "/usr/bin/docker-init",
    "/usr/bin/tini-static",
    "/usr/bin/catatonit",
    "/usr/libexec/podman/catatonit",
)


def is_static_elf(path: str) -> bool:
    """True for an ELF executable without a PT_INTERP header (it runs in any rootfs)."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only
                return False
            (phoff,) = struct.unpack_from("<Q", head, 32)
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    for i in range(phnum):
        (p_type,) = struct.unpack_from("<I", table, i * phentsize)
        if p_type == 3:  # PT_INTERP
            return False
    return True


def find_init() -> str:
    """A static init for ``--init`` (Docker's docker-init is tini); InvalidArgument if none."""
    for path in INIT_CANDIDATES:
        if os.path.exists(path) and is_static_elf(path):
            return path
    raise InvalidArgument("--init needs a static init binary (apt-get install tini or catatonit)")

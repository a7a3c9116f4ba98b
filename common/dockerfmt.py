"""Conversions between Dockyard's models and the Docker Engine API's JSON shapes.

Pure functions (no I/O, no clock unless a ``now`` is passed in) shared by the
gateway and, later, the CLI's Docker-compatible output. They follow moby's
``api/swagger.yaml`` (v1.45) and shared/reference/docker-api.md:

- request side: ``parse_filters`` (both encodings), ``create_request`` (Docker's
  ``ContainerConfig`` + ``HostConfig`` -> ``common.api.execution.CreateRequest`` fields),
  ``parse_docker_time`` (``since``/``until`` of logs and events);
- reply side: ``container_summary`` / ``container_inspect`` (from ``Container``),
  ``state_status`` (``Up 3 seconds``, ``Exited (0) 2 seconds ago``), ``image_summaries`` /
  ``image_inspect`` / ``image_history``, ``pull_progress`` (progress JSON lines),
  ``docker_event`` (journal ``Envelope`` -> ``{Type, Action, Actor, scope, time, timeNano}``),
  ``stats`` and ``top``;
- framing: ``mux_frame`` (the 8-byte header of multiplexed streams).

Input dicts are the JSON (``model_dump(mode="json")``) of the ``common.api`` replies;
times are RFC 3339 strings or aware datetimes.
"""

from __future__ import annotations

import datetime as dt
import json
import posixpath
import re
import struct
from collections.abc import Iterable, Mapping
from typing import Any

from common import networks

ZERO_TIME = "0001-01-01T00:00:00Z"
"""Go's zero ``time.Time`` as Docker prints it."""

DEFAULT_NETWORK_MODE = "none"
"""Dockyard's containers get a network namespace with loopback only."""


class FormatError(ValueError):
    """A Docker request value that cannot be converted; the message names the field."""


# -- times -------------------------------------------------------------------------------------------
def to_datetime(value: Any) -> dt.datetime | None:
    """An aware UTC datetime from a datetime or RFC 3339 string (None for empty / zero time)."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    text = str(value)
    if text.startswith("0001-01-01"):
        return None
    text = text.replace("Z", "+00:00")
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", text)
    if match and match.group(2) and len(match.group(2)) > 7:  # nanoseconds: keep microseconds
        text = match.group(1) + match.group(2)[:7] + match.group(3)
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def rfc3339(value: Any) -> str:
    """RFC 3339 with nanoseconds as Go prints it (``ZERO_TIME`` for none)."""
    when = to_datetime(value)
    if when is None:
        return ZERO_TIME
    when = when.astimezone(dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond:06d}000Z"


def unix_seconds(value: Any) -> int:
    when = to_datetime(value)
    return int(when.timestamp()) if when else 0


_UNIX_TIME = re.compile(r"(-?\d+)(?:\.(\d{1,9}))?")
_DURATION_PART = r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)"
_DURATION = re.compile(rf"([-+]?)((?:{_DURATION_PART})+)")
_DURATION_UNITS_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)"  # a date alone, or with hours, minutes, seconds and a fraction
    r"(?:T(\d\d)(?::(\d\d)(?::(\d\d)(?:\.(\d{1,9}))?)?)?)?"
    r"(Z|[+-]\d\d:\d\d)?"
)


def parse_docker_time(value: str, now: dt.datetime | None = None, zone: dt.tzinfo = dt.UTC) -> dt.datetime:
    """``since``/``until`` as Docker reads them (moby's ``api/types/time.GetTimestamp``), as an
    aware UTC datetime:

    - unix seconds: ``1700000000`` or ``1700000000.123456789`` (kept to the microsecond);
    - a Go duration before ``now`` (default: the clock): ``10m``, ``1h30m``, ``1.5h``, ``90s``,
      ``500ms``; a leading ``-`` is after ``now``;
    - RFC 3339 and its shorter forms: ``2026-11-30T10:00:00Z``, ``2026-11-30T10:00:00.5+01:00``,
      ``2026-11-30T10:00``, ``2026-11-30T10``, ``2026-11-30``, each with or without a zone;
      without one the time is in ``zone`` (default UTC; the docker CLI reads it in its local zone).

    Raises FormatError naming the value (also for a time no datetime can hold).
    """
    text = value.strip()
    try:
        unix = _UNIX_TIME.fullmatch(text)
        if unix:
            nanos = int((unix.group(2) or "").ljust(9, "0"))
            return dt.datetime.fromtimestamp(int(unix.group(1)), dt.UTC) + dt.timedelta(microseconds=nanos // 1000)
        duration = _DURATION.fullmatch(text)
        if duration:
            total = sum(float(n) * _DURATION_UNITS_S[u] for n, u in re.findall(_DURATION_PART, duration.group(2)))
            ago = dt.timedelta(seconds=-total if duration.group(1) == "-" else total)
            return (now or dt.datetime.now(dt.UTC)) - ago
        rfc = _RFC3339.fullmatch(text)
        if rfc:
            year, month, day, hour, minute, second = (int(g or 0) for g in rfc.groups()[:6])
            micro = int((rfc.group(7) or "").ljust(6, "0")[:6])
            offset = rfc.group(8)
            tz = zone if offset is None else dt.UTC if offset == "Z" else _fixed_zone(offset)
            return dt.datetime(year, month, day, hour, minute, second, micro, tz).astimezone(dt.UTC)
    except (ValueError, OverflowError, OSError):
        raise FormatError(f"invalid time value {value!r}: out of range") from None
    raise FormatError(f"invalid time value {value!r}: expected unix seconds, RFC 3339 or a duration")


def _fixed_zone(offset: str) -> dt.tzinfo:
    """``+01:00`` / ``-05:30`` as a fixed zone."""
    sign = -1 if offset[0] == "-" else 1
    return dt.timezone(sign * dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))


def human_duration(seconds: float) -> str:
    """Docker's ``units.HumanDuration`` (go-units), used in ``Status`` strings."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def state_status(state: Mapping[str, Any], now: dt.datetime) -> str:
    """Docker's ``Status`` column: ``Up 3 seconds``, ``Up 5 seconds (Paused)``, ``Restarting (1) 2
    seconds ago``, ``Exited (0) 2 seconds ago``, ``Created``, ``Removal In Progress``, ``Dead``."""
    status = state.get("status")
    started = to_datetime(state.get("started_at"))
    finished = to_datetime(state.get("finished_at"))
    if status in ("running", "paused"):
        text = "Up " + human_duration((now - started).total_seconds() if started else 0)
        return text + " (Paused)" if status == "paused" else text
    if status == "restarting":
        ago = human_duration((now - finished).total_seconds()) if finished else "Less than a second"
        return f"Restarting ({state.get('exit_code', 0)}) {ago} ago"
    if status == "removing":
        return "Removal In Progress"
    if status == "dead":
        return "Dead"
    if status == "created" or started is None:
        return "Created"
    if finished is None:
        return ""
    return f"Exited ({state.get('exit_code', 0)}) {human_duration((now - finished).total_seconds())} ago"


# -- filters -----------------------------------------------------------------------------------------
def parse_filters(raw: str | None) -> dict[str, list[str]]:
    """The ``filters`` query parameter, in either encoding: the Go CLI's map of sets
    ``{"label": {"a=b": true}}`` or a list ``{"label": ["a=b"]}``. Empty -> ``{}``.

    Raises FormatError for anything else (not JSON, wrong shapes).
    """
    if raw is None or not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise FormatError(f"invalid filter {raw!r}: not JSON") from None
    if not isinstance(data, dict):
        raise FormatError(f"invalid filter {raw!r}: expected a JSON object")
    out: dict[str, list[str]] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            values = [str(k) for k, on in value.items() if on]
        elif isinstance(value, list):
            values = [str(v) for v in value]
        elif isinstance(value, str):
            values = [value]
        else:
            raise FormatError(f"invalid filter {key!r}: expected a list or a map of strings")
        out[str(key)] = values
    return out


# -- container create ----------------------------------------------------------------------------------
def _str_list(value: Any, field: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise FormatError(f"invalid {field}: expected a string or a list of strings")


def _dict(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FormatError(f"invalid {field}: expected an object")
    return value


def _int(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatError(f"invalid {field}: expected an integer")
    return value


def _bool(value: Any, field: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise FormatError(f"invalid {field}: expected a boolean")
    return value


_MODE_KINDS: dict[str, str] = {
    **dict.fromkeys(("rw", "ro"), "rw"),
    **dict.fromkeys(("z", "Z"), "label"),
    **dict.fromkeys(("private", "rprivate", "shared", "rshared", "slave", "rslave"), "propagation"),
    "nocopy": "copy",
    **dict.fromkeys(("consistent", "cached", "delegated"), "consistency"),
}


def _valid_mount_mode(mode: str) -> bool:
    """moby's ``linuxValidMountMode``: comma-separated options, at most one of each kind."""
    if not mode:
        return True
    seen: set[str] = set()
    for option in mode.split(","):
        kind = _MODE_KINDS.get(option)
        if kind is None or kind in seen:
            return False
        seen.add(kind)
    return True


def _bind_mount(spec: str) -> dict[str, Any]:
    """One ``HostConfig.Binds`` entry, parsed as moby's ``linuxParser.ParseMountRaw``.

    ``/c`` (a container path alone) is an anonymous volume; ``src:/c[:mode]`` is a bind
    when ``src`` is an absolute host path, else the named volume ``src``. ``/c:ro`` (a
    destination with a mode and no source) is refused, as by moby. Raises FormatError with
    moby's texts (``invalid volume specification: '<spec>'``, ``invalid mode: <mode>``).
    """
    invalid = f"invalid volume specification: '{spec}'"
    parts = spec.split(":", 3)
    if not parts[0]:
        raise FormatError(invalid)
    mode = ""
    if len(parts) == 1:
        source, target = "", parts[0]
    elif len(parts) == 2:
        if _valid_mount_mode(parts[1]):  # destination + mode: no volume is named by it
            raise FormatError(invalid)
        source, target = parts
    elif len(parts) == 3:
        source, target, mode = parts
    else:
        raise FormatError(invalid)
    if not _valid_mount_mode(mode):
        raise FormatError(f"invalid mode: {mode}")
    kind = "bind" if source.startswith("/") else "volume"
    problem = ""
    if not target:
        problem = "field Target must not be empty"
    elif posixpath.normpath(target) == "/":
        problem = "invalid specification: destination can't be '/'"
    elif not target.startswith("/"):
        problem = f"invalid mount path: '{target}' mount path must be absolute"
    if problem:
        raise FormatError(f'{invalid}: invalid mount config for type "{kind}": {problem}')
    return {"type": kind, "source": source, "target": target, "read_only": "ro" in mode.split(",")}


def create_request(body: Any, name: str | None = None) -> dict[str, Any]:
    """Docker's ``POST /containers/create`` body -> ``CreateRequest`` fields.

    Maps Config (Image, Cmd, Entrypoint, Env, WorkingDir, User, Labels, Tty, OpenStdin,
    StdinOnce, Hostname, Domainname, StopSignal, StopTimeout, Volumes) and HostConfig (AutoRemove,
    NetworkMode, Binds, Mounts, Tmpfs, RestartPolicy, resources, CapAdd/CapDrop,
    Privileged, ReadonlyRootfs, Init, SecurityOpt, LogConfig, ConsoleSize, Runtime, GroupAdd).
    Docker's ``bridge``/``default`` network becomes Dockyard's loopback-only ``none``.
    Raises FormatError naming the field for wrong types.
    """
    if not isinstance(body, dict):
        raise FormatError("invalid container config: expected a JSON object")
    image = body.get("Image")
    if not isinstance(image, str) or not image:
        raise FormatError("config.Image: an image name is required")
    host = _dict(body.get("HostConfig"), "HostConfig")
    req: dict[str, Any] = {"image": image}
    if name:
        req["name"] = name
    cmd = _str_list(body.get("Cmd"), "Cmd")
    if cmd is not None:
        req["cmd"] = cmd
    entrypoint = _str_list(body.get("Entrypoint"), "Entrypoint")
    if entrypoint is not None:
        req["entrypoint"] = entrypoint
    req["env"] = _str_list(body.get("Env"), "Env") or []
    for key, field in (("WorkingDir", "working_dir"), ("User", "user"), ("Hostname", "hostname")):
        value = body.get(key)
        if value is not None and not isinstance(value, str):
            raise FormatError(f"invalid {key}: expected a string")
        if value:
            req[field] = value
    if body.get("Domainname"):
        req["domainname"] = str(body["Domainname"])
    labels = _dict(body.get("Labels"), "Labels")
    req["labels"] = {str(k): str(v) for k, v in labels.items()}
    req["tty"] = _bool(body.get("Tty"), "Tty")
    req["open_stdin"] = _bool(body.get("OpenStdin"), "OpenStdin")
    req["stdin_once"] = _bool(body.get("StdinOnce"), "StdinOnce")
    if body.get("StopSignal"):
        req["stop_signal"] = str(body["StopSignal"])
    stop_timeout = _int(body.get("StopTimeout"), "StopTimeout")
    if stop_timeout is not None:
        req["stop_timeout"] = stop_timeout
    req["auto_remove"] = _bool(host.get("AutoRemove"), "HostConfig.AutoRemove")
    network = host.get("NetworkMode") or "default"
    if not isinstance(network, str):
        raise FormatError("invalid HostConfig.NetworkMode: expected a string")
    if network in ("default", "bridge", "none", ""):
        req["network_mode"] = DEFAULT_NETWORK_MODE
    elif network == "host":
        req["network_mode"] = "host"
    else:
        raise FormatError(f"network mode {network!r} is not supported (use none, host or the default)")
    mounts: list[dict[str, Any]] = []
    for spec in _str_list(host.get("Binds"), "HostConfig.Binds") or []:
        mounts.append(_bind_mount(spec))
    for i, m in enumerate(host.get("Mounts") or []):
        if not isinstance(m, dict):
            raise FormatError(f"invalid HostConfig.Mounts[{i}]: expected an object")
        kind = str(m.get("Type") or "volume")
        if kind not in ("bind", "volume", "tmpfs"):
            raise FormatError(f"invalid HostConfig.Mounts[{i}].Type {kind!r}")
        entry: dict[str, Any] = {
            "type": kind,
            "source": str(m.get("Source") or ""),
            "target": str(m.get("Target") or ""),
            "read_only": bool(m.get("ReadOnly")),
        }
        if kind == "bind":  # a missing source is refused, unless BindOptions.CreateMountpoint (API 1.44)
            entry["create_source"] = bool(_dict(m.get("BindOptions"), "BindOptions").get("CreateMountpoint"))
        tmpfs_opts = _dict(m.get("TmpfsOptions"), "TmpfsOptions")
        if tmpfs_opts.get("SizeBytes"):
            entry["options"] = [f"size={int(tmpfs_opts['SizeBytes'])}"]
        mounts.append(entry)
    for target, opts in _dict(host.get("Tmpfs"), "HostConfig.Tmpfs").items():
        mounts.append({"type": "tmpfs", "target": target, "options": [o for o in str(opts).split(",") if o]})
    req["mounts"] = mounts
    # Config.Volumes (docker run -v /path): an anonymous volume each, unless a mount covers it
    req["volumes"] = sorted(str(path) for path in _dict(body.get("Volumes"), "Volumes"))
    policy = _dict(host.get("RestartPolicy"), "HostConfig.RestartPolicy")
    if policy.get("Name"):
        req["restart_policy"] = {
            "name": policy["Name"],
            "maximum_retry_count": _int(policy.get("MaximumRetryCount"), "MaximumRetryCount") or 0,
        }
    resources: dict[str, Any] = {}
    for key, field in (
        ("Memory", "memory"),
        ("MemorySwap", "memory_swap"),
        ("NanoCpus", "nano_cpus"),
        ("CpuShares", "cpu_shares"),
        ("CpuPeriod", "cpu_period"),
        ("CpuQuota", "cpu_quota"),
        ("PidsLimit", "pids_limit"),
    ):
        value = _int(host.get(key), f"HostConfig.{key}")
        if value:
            resources[field] = value
    if host.get("CpusetCpus"):
        resources["cpuset_cpus"] = str(host["CpusetCpus"])
    if resources:
        req["resources"] = resources
    req["cap_add"] = _str_list(host.get("CapAdd"), "HostConfig.CapAdd") or []
    req["cap_drop"] = _str_list(host.get("CapDrop"), "HostConfig.CapDrop") or []
    req["privileged"] = _bool(host.get("Privileged"), "HostConfig.Privileged")
    req["read_only"] = _bool(host.get("ReadonlyRootfs"), "HostConfig.ReadonlyRootfs")
    req["init"] = bool(host.get("Init"))
    req["security_opt"] = _str_list(host.get("SecurityOpt"), "HostConfig.SecurityOpt") or []
    req["group_add"] = _str_list(host.get("GroupAdd"), "HostConfig.GroupAdd") or []
    log_config = _dict(host.get("LogConfig"), "HostConfig.LogConfig")
    log_type = log_config.get("Type") or "json-file"
    if log_type not in ("json-file", "local", "none"):
        raise FormatError(f"logging driver {log_type!r} is not supported (json-file only)")
    log_opts = _dict(log_config.get("Config"), "HostConfig.LogConfig.Config")
    req["log_opts"] = {str(k): str(v) for k, v in log_opts.items()}
    console = host.get("ConsoleSize")
    if isinstance(console, list) and len(console) == 2 and all(isinstance(x, int) for x in console) and any(console):
        req["console_size"] = [int(console[0]), int(console[1])]
    if host.get("Runtime"):
        req["runtime"] = str(host["Runtime"])
    platform = body.get("Platform")
    if isinstance(platform, str) and platform:
        req["platform"] = platform
    return req


def create_warnings(body: Mapping[str, Any]) -> list[str]:
    """The ``Warnings`` of a create Dockyard accepts but cannot honour as asked
    (``common.networks.create_warnings``): ``NetworkMode: bridge`` (it becomes none) and
    published ports (``HostConfig.PortBindings``, ``PublishAllPorts``), which Dockyard never
    publishes. Call after ``create_request`` accepted ``body``."""
    host = body.get("HostConfig") or {}
    return networks.create_warnings(
        str(host.get("NetworkMode") or "default"),
        host.get("PortBindings") if isinstance(host.get("PortBindings"), dict) else None,
        bool(host.get("PublishAllPorts")),
    )


# -- containers ----------------------------------------------------------------------------------------
def _command(c: Mapping[str, Any]) -> str:
    return " ".join([c.get("path") or "", *(c.get("args") or [])]).strip()


def _binds(config: Mapping[str, Any]) -> list[str]:
    out = []
    for m in config.get("mounts") or []:
        if m.get("type") in ("bind", "volume") and m.get("source"):
            out.append(f"{m['source']}:{m['target']}" + (":ro" if m.get("read_only") else ""))
    return out


def _mounts(c: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A container's ``mounts`` (the execution service's MountPoints) -> Docker's ``Mounts``:
    a volume by its name with its data's host directory as Source, a bind by its host path."""
    return [
        {
            "Type": m.get("type", "bind"),
            "Name": m.get("name", ""),
            "Source": m.get("source", ""),
            "Destination": m.get("destination", ""),
            "Driver": m.get("driver", ""),
            "Mode": m.get("mode", ""),
            "RW": bool(m.get("rw", True)),
            "Propagation": m.get("propagation", ""),
        }
        for m in c.get("mounts") or []
    ]


def _network_mode(config: Mapping[str, Any]) -> str:
    return str(config.get("network_mode") or DEFAULT_NETWORK_MODE)


def _networks(config: Mapping[str, Any]) -> dict[str, Any]:
    mode = _network_mode(config)
    endpoint = {
        "IPAMConfig": None,
        "Links": None,
        "Aliases": None,
        "MacAddress": "",
        "NetworkID": networks.network_id(mode) if mode in networks.NETWORKS else "",
        "EndpointID": "",
        "Gateway": "",
        "IPAddress": "",
        "IPPrefixLen": 0,
        "IPv6Gateway": "",
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "DriverOpts": None,
        "DNSNames": None,
    }
    return {mode: endpoint}


def container_summary(c: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    """``Container`` JSON -> one entry of ``GET /containers/json``."""
    config = c.get("config") or {}
    state = c.get("state") or {}
    return {
        "Id": c["id"],
        "Names": ["/" + c["name"]],
        "Image": c.get("image", ""),
        "ImageID": c.get("image_id", ""),
        "Command": _command(c),
        "Created": unix_seconds(c.get("created_at")),
        "Ports": [],
        "Labels": dict(c.get("labels") or {}),
        "State": state.get("status", "created"),
        "Status": state_status(state, now),
        "HostConfig": {"NetworkMode": _network_mode(config)},
        "NetworkSettings": {"Networks": _networks(config)},
        "Mounts": _mounts(c),
    }


def _host_config(config: Mapping[str, Any]) -> dict[str, Any]:
    res = config.get("resources") or {}
    policy = config.get("restart_policy") or {}
    tmpfs = {m["target"]: ",".join(m.get("options") or []) for m in config.get("mounts") or [] if m["type"] == "tmpfs"}
    console = config.get("console_size") or [0, 0]
    return {
        "Binds": _binds(config) or None,
        "ContainerIDFile": "",
        "LogConfig": {"Type": "json-file", "Config": dict(config.get("log_opts") or {})},
        "NetworkMode": _network_mode(config),
        "PortBindings": {},
        "RestartPolicy": {
            "Name": policy.get("name", "no"),
            "MaximumRetryCount": policy.get("maximum_retry_count", 0),
        },
        "AutoRemove": bool(config.get("auto_remove")),
        "VolumeDriver": "",
        "VolumesFrom": None,
        "ConsoleSize": list(console),
        "CapAdd": config.get("cap_add") or None,
        "CapDrop": config.get("cap_drop") or None,
        "CgroupnsMode": "host",
        "Dns": [],
        "DnsOptions": [],
        "DnsSearch": [],
        "ExtraHosts": None,
        "GroupAdd": config.get("group_add") or None,
        "IpcMode": "private",
        "Cgroup": "",
        "Links": None,
        "OomScoreAdj": 0,
        "PidMode": "",
        "Privileged": bool(config.get("privileged")),
        "PublishAllPorts": False,
        "ReadonlyRootfs": bool(config.get("read_only")),
        "SecurityOpt": config.get("security_opt") or None,
        "Tmpfs": tmpfs or None,
        "UTSMode": "",
        "UsernsMode": "",
        "ShmSize": 67108864,
        "Runtime": config.get("runtime") or "runc",
        "Isolation": "",
        "CpuShares": res.get("cpu_shares") or 0,
        "Memory": res.get("memory") or 0,
        "NanoCpus": res.get("nano_cpus") or 0,
        "CgroupParent": "",
        "BlkioWeight": 0,
        "CpuPeriod": res.get("cpu_period") or 0,
        "CpuQuota": res.get("cpu_quota") or 0,
        "CpusetCpus": res.get("cpuset_cpus") or "",
        "CpusetMems": "",
        "Devices": [],
        "MemoryReservation": 0,
        "MemorySwap": res.get("memory_swap") or 0,
        "MemorySwappiness": None,
        "OomKillDisable": None,
        "PidsLimit": res.get("pids_limit"),
        "Ulimits": [],
        "Init": bool(config.get("init")),
        "Mounts": [
            {"Type": m["type"], "Source": m.get("source", ""), "Target": m["target"], "ReadOnly": m.get("read_only")}
            for m in config.get("mounts") or []
            if m.get("type") != "tmpfs"
        ]
        or None,
        "MaskedPaths": [],
        "ReadonlyPaths": [],
    }


def container_inspect(c: Mapping[str, Any]) -> dict[str, Any]:
    """``Container`` JSON -> ``GET /containers/{id}/json``. Config/HostConfig echo the
    request as stored (the CreateRequest), with Docker's defaults for the rest."""
    config = c.get("config") or {}
    state = c.get("state") or {}
    argv = [c.get("path") or "", *(c.get("args") or [])]
    cmd = config.get("cmd")
    if cmd is None and config.get("entrypoint") is None:
        cmd = argv if argv[0] else None
    log_path = c.get("log_path") or ""
    cdir = log_path.rsplit("/", 1)[0] if log_path else ""
    return {
        "Id": c["id"],
        "Created": rfc3339(c.get("created_at")),
        "Path": c.get("path", ""),
        "Args": list(c.get("args") or []),
        "State": {
            "Status": state.get("status", "created"),
            "Running": bool(state.get("running")),
            "Paused": bool(state.get("paused")),
            "Restarting": bool(state.get("restarting")),
            "OOMKilled": bool(state.get("oom_killed")),
            "Dead": bool(state.get("dead")),
            "Pid": int(state.get("pid") or 0),
            "ExitCode": int(state.get("exit_code") or 0),
            "Error": state.get("error") or "",
            "StartedAt": rfc3339(state.get("started_at")),
            "FinishedAt": rfc3339(state.get("finished_at")),
        },
        "Image": c.get("image_id", ""),
        "ResolvConfPath": f"{cdir}/resolv.conf" if cdir else "",
        "HostnamePath": f"{cdir}/hostname" if cdir else "",
        "HostsPath": f"{cdir}/hosts" if cdir else "",
        "LogPath": log_path,
        "Name": "/" + c["name"],
        "RestartCount": int(c.get("restart_count") or 0),
        "Driver": "overlay2",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": list(c.get("exec_ids") or []) or None,
        "HostConfig": _host_config(config),
        "GraphDriver": {"Name": "overlay2", "Data": {"MergedDir": (c.get("bundle") or "") + "/rootfs"}},
        "Mounts": _mounts(c),
        "Config": {
            "Hostname": c.get("hostname") or config.get("hostname") or "",
            "Domainname": config.get("domainname") or "",
            "User": config.get("user") or "",
            "AttachStdin": bool(config.get("open_stdin")),
            "AttachStdout": True,
            "AttachStderr": True,
            "Tty": bool(config.get("tty")),
            "OpenStdin": bool(config.get("open_stdin")),
            "StdinOnce": bool(config.get("stdin_once")),
            "Env": list(c.get("env") or config.get("env") or []),
            "Cmd": cmd,
            "Image": c.get("image", ""),
            "Volumes": {str(p): {} for p in c.get("volumes") or []} or None,
            "WorkingDir": config.get("working_dir") or "",
            "Entrypoint": config.get("entrypoint"),
            "OnBuild": None,
            "Labels": dict(c.get("labels") or {}),
            "StopSignal": c.get("stop_signal") or config.get("stop_signal") or "SIGTERM",
            **({"StopTimeout": config["stop_timeout"]} if config.get("stop_timeout") is not None else {}),
        },
        "NetworkSettings": {
            "Bridge": "",
            "SandboxID": "",
            "SandboxKey": "",
            "Ports": {},
            "HairpinMode": False,
            "LinkLocalIPv6Address": "",
            "LinkLocalIPv6PrefixLen": 0,
            "SecondaryIPAddresses": None,
            "SecondaryIPv6Addresses": None,
            "EndpointID": "",
            "Gateway": "",
            "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0,
            "IPAddress": "",
            "IPPrefixLen": 0,
            "IPv6Gateway": "",
            "MacAddress": "",
            "Networks": _networks(config),
        },
    }


def top(reply: Mapping[str, Any]) -> dict[str, Any]:
    """``TopReply`` -> ``{Titles, Processes}``."""
    return {"Titles": list(reply.get("titles") or []), "Processes": [list(p) for p in reply.get("processes") or []]}


def stats(sample: Mapping[str, Any], previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A ``Stats`` sample (and the one before it, for ``precpu_stats``) -> Docker's stats JSON.

    The docker CLI computes CPU % from the deltas of ``cpu_usage.total_usage`` and
    ``system_cpu_usage`` between ``cpu_stats`` and ``precpu_stats``, memory as
    ``usage`` minus ``stats.total_inactive_file``.
    """

    if previous is None and sample.get("cpu_percent"):
        # one sample over a window: rebuild the counters of the window's start from the measured
        # percentage, over one second of system time (what the CLI's formula then gives back)
        online = int(sample.get("online_cpus") or 1)
        system_delta = online * 1_000_000_000
        cpu_delta = int(float(sample["cpu_percent"]) / 100.0 * system_delta / online)
        previous = {
            "read": None,
            "cpu_total_ns": max(0, int(sample.get("cpu_total_ns") or 0) - cpu_delta),
            "system_cpu_ns": max(0, int(sample.get("system_cpu_ns") or 0) - system_delta),
            "online_cpus": online,
        }

    def cpu(s: Mapping[str, Any] | None) -> dict[str, Any]:
        if not s:
            return {
                "cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
                "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
            }
        return {
            "cpu_usage": {
                "total_usage": int(s.get("cpu_total_ns") or 0),
                "usage_in_kernelmode": 0,
                "usage_in_usermode": int(s.get("cpu_total_ns") or 0),
            },
            "system_cpu_usage": int(s.get("system_cpu_ns") or 0),
            "online_cpus": int(s.get("online_cpus") or 1),
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
        }

    return {
        "read": rfc3339(sample.get("read")),
        "preread": rfc3339(previous.get("read")) if previous and previous.get("read") else ZERO_TIME,
        "pids_stats": {"current": int(sample.get("pids") or 0)},
        "blkio_stats": {
            "io_service_bytes_recursive": [
                {"major": 0, "minor": 0, "op": "read", "value": int(sample.get("block_read") or 0)},
                {"major": 0, "minor": 0, "op": "write", "value": int(sample.get("block_write") or 0)},
            ],
            "io_serviced_recursive": None,
            "io_queue_recursive": None,
            "io_service_time_recursive": None,
            "io_wait_time_recursive": None,
            "io_merged_recursive": None,
            "io_time_recursive": None,
            "sectors_recursive": None,
        },
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": cpu(sample),
        "precpu_stats": cpu(previous),
        "memory_stats": {
            "usage": int(sample.get("memory_usage") or 0),
            "stats": {"total_inactive_file": 0},
            "limit": int(sample.get("memory_limit") or 0),
        },
        "name": "/" + str(sample.get("name") or ""),
        "id": str(sample.get("id") or ""),
        "networks": {
            "lo": {
                "rx_bytes": int(sample.get("net_rx") or 0),
                "rx_packets": 0,
                "rx_errors": 0,
                "rx_dropped": 0,
                "tx_bytes": int(sample.get("net_tx") or 0),
                "tx_packets": 0,
                "tx_errors": 0,
                "tx_dropped": 0,
            }
        },
    }


# -- images --------------------------------------------------------------------------------------------
def familiar(name: str) -> str:
    """``docker.io/library/busybox:latest`` -> ``busybox:latest`` (Docker's familiar form)."""
    for prefix in ("docker.io/library/", "docker.io/"):
        if name.startswith(prefix):
            rest = name[len(prefix) :]
            if prefix == "docker.io/" and "/" not in rest.split(":")[0].split("@")[0]:
                continue
            return rest
    return name


def image_summaries(items: Iterable[Mapping[str, Any]], api: tuple[int, int] = (1, 45)) -> list[dict[str, Any]]:
    """``ImageSummary`` JSON records -> ``GET /images/json``: one entry per image id, every
    record naming it merged into ``RepoTags``/``RepoDigests``, newest first."""
    merged: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for item in items:
        image_id = item["id"]
        entry = merged.get(image_id)
        if entry is None:
            created = item.get("created") or item.get("created_at")
            entry = {
                "Id": image_id,
                "ParentId": "",
                "RepoTags": [],
                "RepoDigests": [],
                "Created": unix_seconds(created),
                "Size": int(item.get("size") or 0),
                "SharedSize": -1,
                "Labels": dict(item.get("config_labels") or {}) or None,
                "Containers": -1,
            }
            if api < (1, 44):
                entry["VirtualSize"] = entry["Size"]
            merged[image_id] = entry
            order.append(image_id)
        for tag in item.get("repo_tags") or []:
            if tag not in entry["RepoTags"]:
                entry["RepoTags"].append(tag)
        for digest in item.get("repo_digests") or []:
            if digest not in entry["RepoDigests"]:
                entry["RepoDigests"].append(digest)
    out = [merged[i] for i in order]
    for entry in out:
        if not entry["RepoTags"] and api < (1, 43):
            entry["RepoTags"] = ["<none>:<none>"]
            if not entry["RepoDigests"]:
                entry["RepoDigests"] = ["<none>@<none>"]
    out.sort(key=lambda e: e["Created"], reverse=True)
    return out


def _config_section(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "Hostname": "",
        "Domainname": "",
        "User": cfg.get("User") or "",
        "AttachStdin": False,
        "AttachStdout": False,
        "AttachStderr": False,
        "ExposedPorts": cfg.get("ExposedPorts"),
        "Tty": False,
        "OpenStdin": False,
        "StdinOnce": False,
        "Env": cfg.get("Env"),
        "Cmd": cfg.get("Cmd"),
        "Image": "",
        "Volumes": cfg.get("Volumes"),
        "WorkingDir": cfg.get("WorkingDir") or "",
        "Entrypoint": cfg.get("Entrypoint"),
        "OnBuild": cfg.get("OnBuild"),
        "Labels": cfg.get("Labels"),
        **({"StopSignal": cfg["StopSignal"]} if cfg.get("StopSignal") else {}),
    }


def image_inspect(img: Mapping[str, Any], api: tuple[int, int] = (1, 45)) -> dict[str, Any]:
    """``ImageInspect`` JSON -> ``GET /images/{name}/json``."""
    cfg = img.get("config") or {}
    rootfs = img.get("rootfs") or {}
    meta = img.get("metadata") or {}
    out: dict[str, Any] = {
        "Id": img["id"],
        "RepoTags": list(img.get("repo_tags") or []),
        "RepoDigests": list(img.get("repo_digests") or []),
        "Parent": img.get("parent") or "",
        "Comment": img.get("comment") or "",
        "Created": rfc3339(img.get("created")) if img.get("created") else "",
        "DockerVersion": "",
        "Author": img.get("author") or "",
        "Config": _config_section(cfg),
        "Architecture": img.get("architecture") or "",
        **({"Variant": img["variant"]} if img.get("variant") else {}),
        "Os": img.get("os") or "",
        "Size": int(img.get("size") or 0),
        "GraphDriver": {"Name": "overlay2", "Data": None},
        "RootFS": {
            "Type": rootfs.get("type", "layers"),
            "Layers": list(rootfs.get("diff_ids") or rootfs.get("layers") or []),
        },
        "Metadata": {"LastTagTime": rfc3339(meta.get("last_tag_time")) if meta.get("last_tag_time") else ZERO_TIME},
    }
    if api < (1, 44):
        out["VirtualSize"] = out["Size"]
        out["Container"] = ""
        out["ContainerConfig"] = _config_section({})
    return out


def image_history(entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``HistoryEntry`` JSON records -> ``GET /images/{name}/history`` (newest first as given)."""
    return [
        {
            "Id": e.get("id") or "<missing>",
            "Created": unix_seconds(e.get("created")),
            "CreatedBy": e.get("created_by") or "",
            "Tags": list(e.get("tags") or []) or None,
            "Size": int(e.get("size") or 0),
            "Comment": e.get("comment") or "",
        }
        for e in entries
    ]


def _progress_bar(current: int, total: int, width: int = 50) -> str:
    if total <= 0:
        return ""
    done = min(width, int(width * current / total))
    arrow = ">" if done < width else ""
    bar = "=" * max(0, done - (1 if arrow else 0)) + arrow + " " * (width - done)
    return f"[{bar}] {_size(current)}/{_size(total)}"


def _size(n: int) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.4g}{unit}"
    return f"{n}B"


def pull_progress(frame: Mapping[str, Any]) -> dict[str, Any] | None:
    """A ``Progress`` frame -> one Docker progress JSON object (None for the final ``done``).

    Layer frames keep their ``id``; Downloading/Extracting/Pushing carry ``progressDetail``
    ``{current, total}`` and the ``progress`` bar text the docker CLI prints.
    """
    status = str(frame.get("status") or "")
    if status == "done":
        return None
    out: dict[str, Any] = {"status": frame.get("message") or status if not frame.get("id") else status}
    if frame.get("id"):
        out["id"] = frame["id"]
        current, total = int(frame.get("current") or 0), int(frame.get("total") or 0)
        if current or total:
            out["progressDetail"] = {"current": current, "total": total} if total else {"current": current}
            bar = _progress_bar(current, total)
            if bar:
                out["progress"] = bar
        else:
            out["progressDetail"] = {}
    elif frame.get("message") and status not in ("message", "info") and frame["message"] != status:
        out["status"] = frame["message"]
    return out


def progress_error(message: str) -> dict[str, Any]:
    """An error after the 200 of a streaming image call: ``{errorDetail, error}``."""
    return {"errorDetail": {"message": message}, "error": message}


# -- events --------------------------------------------------------------------------------------------
_TASK_ACTIONS = {
    "/tasks/start": "start",
    "/tasks/oom": "oom",
    "/tasks/paused": "pause",
    "/tasks/resumed": "unpause",
    "/tasks/exec-added": "exec_create",
    "/tasks/exec-started": "exec_start",
    "/tasks/kill": "kill",
}
_CONTAINER_ACTIONS = {
    "/containers/create": "create",
    "/containers/delete": "destroy",
    "/containers/stop": "stop",
    "/containers/restart": "restart",
    "/containers/attach": "attach",
    "/containers/resize": "resize",
    "/containers/export": "export",
    "/containers/top": "top",
}
_EXEC_ACTIONS = ("exec_create", "exec_start")
_IMAGE_ID_ACTIONS = ("tag", "untag", "delete", "load", "import", "save")
"""Image actions whose Actor.ID is the image id (pull and push name the reference)."""
_DANGLING_PREFIX = "<none>@"
"""``services.image.metadata.DANGLING_PREFIX``: names of images that have none."""
"""dockerd names these ``exec_create: <entrypoint> <args>`` (the filter ``event=exec_create`` matches)."""
_EXIT_TOPIC, _EXIT_ACTIONS = "/tasks/exit", ("die", "exec_die")
_NAMED_ACTION_TOPICS = ("/containers/update", "/images/create", "/images/update", "/images/delete")
"""Topics whose Docker action is named by the payload (``action``: rename, commit, pull, load ...)."""
_DOCKER_TYPE_KINDS = {"container": ("container", "task"), "image": ("image",)}
"""Docker's event ``Type`` -> the resource kinds (``/<kind>s/...``) of the topics it comes from."""


def event_topics(action: str) -> list[str]:
    """The journal topics a Docker event ``action`` (``die``, ``start``, ``tag`` ...) can come
    from, as ``docker_event`` maps them: a fixed action names its topics (``die`` ->
    ``/tasks/exit``); any other may be named by a payload (``/containers/update``, ``/images/*``).
    A pre-filter: ``docker_event`` + ``event_matches`` decide (``/tasks/exit`` is die or exec_die)."""
    action = action.split(":")[0]  # ``exec_create: sh -c ...`` is exec_create
    fixed = [t for t, a in {**_CONTAINER_ACTIONS, **_TASK_ACTIONS}.items() if a == action]
    if action in _EXIT_ACTIONS:
        fixed.append(_EXIT_TOPIC)
    return fixed or list(_NAMED_ACTION_TOPICS)


def event_kinds(docker_type: str) -> list[str]:
    """The resource kinds of the topics Docker's event ``type`` covers (``container`` -> containers
    and tasks); a Dockyard kind (``task``, ``snapshot``, ``content``) or a type Dockyard has no
    events of (``volume``, ``network``) stands for itself."""
    return list(_DOCKER_TYPE_KINDS.get(docker_type, (docker_type,)))


def docker_event(env: Mapping[str, Any]) -> dict[str, Any] | None:
    """A journal ``Envelope`` -> a Docker event ``{Type, Action, Actor{ID, Attributes}, scope,
    time, timeNano}`` plus the legacy ``status``/``id``/``from`` of container events; None for
    topics Docker has no event for (snapshots, content, task create/delete).

    Mapping (dockerd's daemon/*.go ``LogContainerEvent*`` calls): /containers/create -> create,
    /tasks/start -> start, /tasks/kill -> kill (``signal``, a number), /tasks/exit -> die
    (``exitCode``, ``execDuration`` in whole seconds when the payload has ``started_at``; an
    exec's exit -> exec_die with ``execID``, ``exitCode``), /containers/stop -> stop,
    /containers/restart -> restart, /containers/delete -> destroy, /tasks/paused -> pause,
    /tasks/resumed -> unpause, /tasks/oom -> oom, /tasks/exec-added|started ->
    ``exec_create: <args>``/``exec_start: <args>`` (``execID``), /containers/attach -> attach,
    /containers/resize -> resize (``height``, ``width``), /containers/export -> export,
    /containers/top -> top, /containers/update -> update (or the ``action`` the payload names:
    rename with ``oldName``, commit with ``comment``/``imageID``/``imageRef``),
    /images/create|update -> tag (or the payload's ``action``: pull, load, import), /images/delete
    -> untag (or delete). Every container event has ``name`` (the container's name when the
    event happened) and ``image`` (as the user named it) and the container's labels.
    """
    topic = str(env.get("topic") or "")
    event = env.get("event") or {}
    when = to_datetime(env.get("timestamp")) or dt.datetime.fromtimestamp(0, dt.UTC)
    time_nano = int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000
    attrs: dict[str, str] = {}
    if topic.startswith("/images/"):
        kind = "image"
        name = str(event.get("name") or "")
        if name.startswith(_DANGLING_PREFIX):
            return None  # the ``<none>`` record of an image that lost its name: dockerd has no event
        action = str(event.get("action") or ("untag" if topic == "/images/delete" else "tag"))
        if action == "commit":
            action = "tag"  # dockerd's commit tags the new image: a ``tag`` event (the container has ``commit``)
        image_id = str(event.get("image_id") or "")
        actor = familiar(name)
        if image_id and action in _IMAGE_ID_ACTIONS:
            # dockerd's LogImageEvent(imageID, refName, action): tag names the new reference;
            # untag, delete, load, import and save name the image by its id
            actor = image_id
            if action != "tag":
                name = image_id
        attrs["name"] = familiar(name) if not name.startswith("sha256:") else name
        for k, v in (event.get("labels") or {}).items():
            attrs[str(k)] = str(v)
    elif topic.startswith("/containers/") or topic.startswith("/tasks/"):
        kind = "container"
        cid = str(event.get("container_id") or event.get("id") or "")
        actor = cid
        if topic in _CONTAINER_ACTIONS:
            action = _CONTAINER_ACTIONS[topic]
        elif topic == "/containers/update":
            action = str(event.get("action") or "update")
        elif topic == _EXIT_TOPIC:
            exec_id = str(event.get("id") or "")
            if exec_id and exec_id != cid:
                action = _EXIT_ACTIONS[1]
                attrs["execID"] = exec_id
            else:
                action = _EXIT_ACTIONS[0]
            attrs["exitCode"] = str(event.get("exit_status", 0))
            started = to_datetime(event.get("started_at")) if action == "die" else None
            exited = to_datetime(event.get("exited_at"))
            if started is not None and exited is not None:
                attrs["execDuration"] = str(max(0, int((exited - started).total_seconds())))
        elif topic in _TASK_ACTIONS:
            action = _TASK_ACTIONS[topic]
            if event.get("exec_id"):
                attrs["execID"] = str(event["exec_id"])
            args = event.get("args")
            if action in _EXEC_ACTIONS and isinstance(args, list) and args:
                # dockerd: action + ": " + Entrypoint + " " + strings.Join(Args, " ")
                action = f"{action}: {args[0]} {' '.join(str(a) for a in args[1:])}"
        else:
            return None
        image = event.get("image")
        if image:
            attrs["image"] = str(image)
        container_name = event.get("container_name") or event.get("name")
        if container_name:
            attrs["name"] = str(container_name).lstrip("/")
        for k, v in (event.get("labels") or {}).items():
            attrs.setdefault(str(k), str(v))
        if event.get("signal") is not None:
            attrs["signal"] = str(event["signal"])
        if event.get("old_name"):
            attrs["oldName"] = "/" + str(event["old_name"]).lstrip("/")
        if action == "resize":
            attrs["height"] = str(event.get("height", 0))
            attrs["width"] = str(event.get("width", 0))
        if action == "commit":
            attrs["comment"] = str(event.get("comment") or "")
            attrs["imageID"] = str(event.get("image_id") or "")
            ref = str(event.get("image_ref") or "")
            attrs["imageRef"] = familiar(ref) if ref else ""
    else:
        return None
    out: dict[str, Any] = {
        "Type": kind,
        "Action": action,
        "Actor": {"ID": actor, "Attributes": attrs},
        "scope": "local",
        "time": time_nano // 1_000_000_000,
        "timeNano": time_nano,
    }
    if kind == "container":
        out = {"status": action, "id": actor, "from": attrs.get("image", ""), **out}
    elif kind == "image":
        out = {"status": action, "id": actor, **out}
    return out


def event_matches(ev: Mapping[str, Any], filters: Mapping[str, list[str]]) -> bool:
    """Docker's events filters: ``type``, ``event``, ``container`` (id prefix or name), ``image``,
    ``label`` (key or key=value), ``scope``; OR within a key, AND across keys."""
    actor = ev.get("Actor") or {}
    attrs = actor.get("Attributes") or {}
    for key, values in filters.items():
        if not values:
            continue
        if key == "type" and ev.get("Type") not in values:
            return False
        if key in ("event", "action"):
            action = str(ev.get("Action") or "")
            if not any(action == v or action.split(":")[0] == v for v in values):
                return False
        if key == "container":
            if ev.get("Type") != "container":
                return False
            ident = str(actor.get("ID") or "")
            if not any(ident.startswith(v) or attrs.get("name") == v.lstrip("/") for v in values):
                return False
        if key == "image":
            names = {attrs.get("image"), attrs.get("name") if ev.get("Type") == "image" else None}
            names.discard(None)
            if not any(v in names or f"{v}:latest" in names for v in values):
                return False
        if key == "label":
            for v in values:
                k, sep, want = v.partition("=")
                if k not in attrs or (sep and attrs[k] != want):
                    return False
        if key == "scope" and "local" not in values:
            return False
    return True


# -- streams -------------------------------------------------------------------------------------------
def mux_frame(stream: int, data: bytes) -> bytes:
    """One frame of Docker's multiplexed stream: ``[stream, 0, 0, 0, size uint32 BE] + data``."""
    return struct.pack(">BxxxL", stream, len(data)) + data


def demux(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Take every complete frame off the front of ``buffer`` (the rest stays for the next read)."""
    out = []
    while len(buffer) >= 8:
        stream, size = struct.unpack(">BxxxL", bytes(buffer[:8]))
        if len(buffer) < 8 + size:
            break
        out.append((stream, bytes(buffer[8 : 8 + size])))
        del buffer[: 8 + size]
    return out


# -- volumes -------------------------------------------------------------------------------------------
def volume(vol: Mapping[str, Any]) -> dict[str, Any]:
    """A ``Volume`` JSON -> Docker's volume object (``docker volume inspect``). ``UsageData``
    (RefCount: the containers using it; Size: bytes of its data) only when the volume was
    measured (``size`` set: ``/system/df``), as moby, which omits it elsewhere."""
    out = {
        "Name": vol["name"],
        "Driver": vol.get("driver") or "local",
        "Mountpoint": vol.get("mountpoint") or "",
        "CreatedAt": rfc3339(vol.get("created_at")).replace(".000000000Z", "Z"),
        "Labels": dict(vol.get("labels") or {}) or None,
        "Scope": "local",
        "Options": None,
    }
    if vol.get("size") is not None:
        out["UsageData"] = {"RefCount": len(vol.get("in_use_by") or []), "Size": int(vol["size"])}
    return out

"""``docker import --change``: Dockerfile instructions applied to an image config.

Supported (as ``docker import`` / ``docker commit`` do): ``CMD``, ``ENTRYPOINT``, ``ENV``,
``EXPOSE``, ``LABEL``, ``ONBUILD``, ``STOPSIGNAL``, ``USER``, ``VOLUME``, ``WORKDIR``.
``CMD``/``ENTRYPOINT`` take the JSON (exec) form or the shell form (``["/bin/sh", "-c", ...]``);
``ENV``/``LABEL`` take ``k=v ...`` (quotes allowed) or the legacy ``k v``. Anything else is
InvalidArgument naming the instruction.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from common.errors import InvalidArgument

SUPPORTED = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "ONBUILD", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR")


def _exec_or_shell(arg: str) -> list[str]:
    text = arg.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    return ["/bin/sh", "-c", text]


def _pairs(instruction: str, arg: str) -> list[tuple[str, str]]:
    try:
        words = shlex.split(arg, posix=True)
    except ValueError as exc:
        raise InvalidArgument(f"invalid {instruction} change {arg!r}: {exc}") from None
    if not words:
        raise InvalidArgument(f"invalid {instruction} change: missing arguments")
    if "=" not in words[0]:
        # legacy form: ENV key value with spaces
        key, _, value = arg.strip().partition(" ")
        if not value.strip():
            raise InvalidArgument(f"invalid {instruction} change {arg!r}: expected key=value or 'key value'")
        return [(key, value.strip())]
    out = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"invalid {instruction} change {arg!r}: {word!r} is not key=value")
        out.append((key, value))
    return out


def apply_changes(config: dict[str, Any], changes: list[str]) -> dict[str, Any]:
    """Apply ``changes`` to the ``config`` section of an image config (a copy is returned).

    Raises InvalidArgument for an unknown or malformed instruction.
    """
    out: dict[str, Any] = json.loads(json.dumps(config))
    for change in changes:
        text = change.strip()
        if not text:
            continue
        instruction, _, arg = text.partition(" ")
        if "=" in instruction and not arg:  # "ENV=x" is not an instruction
            raise InvalidArgument(f"invalid change {change!r}: expected 'INSTRUCTION arguments'")
        name = instruction.upper()
        arg = arg.strip()
        if name not in SUPPORTED:
            raise InvalidArgument(
                f"invalid change {change!r}: {instruction} is not supported (supported: {', '.join(SUPPORTED)})"
            )
        if not arg:
            raise InvalidArgument(f"invalid change {change!r}: {name} needs an argument")
        if name == "CMD":
            out["Cmd"] = _exec_or_shell(arg)
        elif name == "ENTRYPOINT":
            out["Entrypoint"] = _exec_or_shell(arg)
        elif name == "ENV":
            env = list(out.get("Env") or [])
            for key, value in _pairs(name, arg):
                env = [e for e in env if e.split("=", 1)[0] != key]
                env.append(f"{key}={value}")
            out["Env"] = env
        elif name == "LABEL":
            labels = dict(out.get("Labels") or {})
            labels.update(dict(_pairs(name, arg)))
            out["Labels"] = labels
        elif name == "EXPOSE":
            ports = dict(out.get("ExposedPorts") or {})
            for port in arg.split():
                number, _, proto = port.partition("/")
                if not number.isdigit() or not 0 < int(number) < 65536 or proto not in ("", "tcp", "udp", "sctp"):
                    raise InvalidArgument(f"invalid EXPOSE change: bad port {port!r}")
                ports[f"{int(number)}/{proto or 'tcp'}"] = {}
            out["ExposedPorts"] = ports
        elif name == "VOLUME":
            volumes = dict(out.get("Volumes") or {})
            paths = _exec_or_shell(arg) if arg.startswith("[") else arg.split()
            if paths[:2] == ["/bin/sh", "-c"]:
                paths = arg.split()
            for path in paths:
                volumes[path] = {}
            out["Volumes"] = volumes
        elif name == "USER":
            out["User"] = arg
        elif name == "WORKDIR":
            out["WorkingDir"] = arg
        elif name == "STOPSIGNAL":
            out["StopSignal"] = arg
        elif name == "ONBUILD":
            out["OnBuild"] = [*list(out.get("OnBuild") or []), arg]
    return out

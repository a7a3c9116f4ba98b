"""Where every Dockyard socket and directory lives.

All addresses derive from two directories, ``root`` (persistent, default
``/var/lib/dockyard``) and ``state`` (runtime, default ``/run/dockyard``), so
several instances run side by side when each has its own pair. Any control
endpoint can be overridden with ``DOCKYARD_<SERVICE>_ENDPOINT``.

This module is deliberately free of pydantic so that the CLI's hot commands
can compute addresses without paying for it; ``common.settings`` builds on it.
"""

from __future__ import annotations

from common import posixos

TYPE_CHECKING = False  # typing costs the CLI's hot path an import; type checkers read this as typing's
if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_ROOT = "/var/lib/dockyard"
DEFAULT_STATE = "/run/dockyard"

SERVICES = ("events", "snapshot", "image", "execution", "gateway")
"""The long-lived services, in the order ``dockyard up`` starts them."""

UNIX_PATH_MAX = 107
"""Longest path a unix socket address may have on Linux (sun_path minus NUL)."""


def root_dir(env: Mapping[str, str] | None = None) -> str:
    """Return the persistent root directory (``DOCKYARD_ROOT``)."""
    env = posixos.environ() if env is None else env
    return env.get("DOCKYARD_ROOT") or DEFAULT_ROOT


def state_dir(env: Mapping[str, str] | None = None) -> str:
    """Return the runtime state directory (``DOCKYARD_STATE``)."""
    env = posixos.environ() if env is None else env
    return env.get("DOCKYARD_STATE") or DEFAULT_STATE


def _ipc(path: str) -> str:
    if len(path.encode()) > UNIX_PATH_MAX:
        raise ValueError(
            f"socket path {path!r} is {len(path)} bytes, over the unix limit of {UNIX_PATH_MAX}; "
            "use a shorter DOCKYARD_STATE"
        )
    return "ipc://" + path


def control_endpoint(service: str, env: Mapping[str, str] | None = None) -> str:
    """Return the ROUTER endpoint of ``service`` (``ipc://<state>/<service>.sock``).

    ``service`` is one of ``SERVICES`` or ``supervisor``. Raises ``ValueError`` when the
    resulting unix socket path would exceed the kernel's limit.
    """
    env = posixos.environ() if env is None else env
    override = env.get(f"DOCKYARD_{service.upper()}_ENDPOINT")
    if override:
        return override
    return _ipc(posixos.join(state_dir(env), f"{service}.sock"))


def events_publish_endpoint(env: Mapping[str, str] | None = None) -> str:
    """Return the XSUB endpoint fire-and-forget publishers connect to."""
    env = posixos.environ() if env is None else env
    return env.get("DOCKYARD_EVENTS_PUBLISH_ENDPOINT") or _ipc(posixos.join(state_dir(env), "events-in.sock"))


def events_subscribe_endpoint(env: Mapping[str, str] | None = None) -> str:
    """Return the XPUB endpoint subscribers connect to."""
    env = posixos.environ() if env is None else env
    return env.get("DOCKYARD_EVENTS_SUBSCRIBE_ENDPOINT") or _ipc(posixos.join(state_dir(env), "events-out.sock"))


def gateway_socket_path(env: Mapping[str, str] | None = None) -> str:
    """Return the path of the gateway's HTTP unix socket (``<state>/dockyard.sock``)."""
    env = posixos.environ() if env is None else env
    return env.get("DOCKYARD_GATEWAY_SOCKET") or posixos.join(state_dir(env), "dockyard.sock")


def shim_endpoint(namespace: str, container_id: str, env: Mapping[str, str] | None = None) -> str:
    """Return the ROUTER endpoint of the shim of one container.

    The address is ``ipc://<state>/s/<24 hex of sha256("<ns>/<id>")>`` so its length
    does not depend on the container id (unix socket paths are short); the shim also
    writes it to its bundle's ``address`` file.
    """
    import hashlib

    digest = hashlib.sha256(f"{namespace}/{container_id}".encode()).hexdigest()[:24]
    return _ipc(posixos.join(state_dir(env), "s", digest))


def bundle_dir(namespace: str, container_id: str, env: Mapping[str, str] | None = None) -> str:
    """Return the OCI bundle directory of a container (``<state>/tasks/<ns>/<id>``)."""
    return posixos.join(state_dir(env), "tasks", namespace, container_id)


def container_dir(namespace: str, container_id: str, env: Mapping[str, str] | None = None) -> str:
    """Return the persistent directory of a container (``<root>/containers/<ns>/<id>``).

    It holds what must outlive the task and a reboot: the json-file log.
    """
    return posixos.join(root_dir(env), "containers", namespace, container_id)


def runtime_root(runtime: str, env: Mapping[str, str] | None = None) -> str:
    """Return the ``--root`` directory handed to the OCI runtime binary."""
    return posixos.join(state_dir(env), "runtime", posixos.basename(runtime))


def seccomp_cache_dir(runtime: str, env: Mapping[str, str] | None = None) -> str:
    """Return the directory of the seccomp filters compiled by ``runtime`` (``<state>/seccomp/<basename>``).

    Beside the runtime's ``--root``, not in it (crun lists every directory in its root as
    a container), and not in ``<state>/runtime`` either (whose every entry is a runtime
    root). Under ``state``, so a reboot, and with it a new kernel, starts it empty.
    """
    return posixos.join(state_dir(env), "seccomp", posixos.basename(runtime))

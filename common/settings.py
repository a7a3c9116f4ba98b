"""Settings of a Dockyard process, read once at start-up.

One pydantic-settings class; every field can be set by an environment variable
``DOCKYARD_<FIELD>`` (e.g. ``DOCKYARD_ROOT``, ``DOCKYARD_STATE``,
``DOCKYARD_RUNTIME=crun``, ``DOCKYARD_INSECURE_REGISTRIES='["myreg:5000"]'``).
Addresses derive from ``root`` and ``state`` through ``common.endpoints``.
"""

from __future__ import annotations

import os
from collections import ChainMap
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from common import endpoints


class Settings(BaseSettings):
    """Settings shared by every Dockyard process (each process reads its own copy)."""

    model_config = SettingsConfigDict(env_prefix="DOCKYARD_", extra="ignore")

    root: Path = Field(default=Path(endpoints.DEFAULT_ROOT), description="persistent data directory")
    state: Path = Field(default=Path(endpoints.DEFAULT_STATE), description="runtime state directory")
    state_tmpfs: bool = Field(
        default=True,
        description="mount a tmpfs on an empty state directory that is not on one (common.statefs)",
    )
    namespace: str = Field(default="default", description="namespace used when a request names none")
    log_level: str = Field(default="info", description="debug, info, warning or error")

    runtime: str = Field(default="runc", description="OCI runtime binary: runc or crun (name or path)")
    snapshotter: str = Field(default="overlayfs", description="overlayfs or native")
    prime_cgroup_move: bool = Field(
        default=True,
        description="start the kernel's grace period for a task's cgroup move as a start or exec arrives",
    )
    shim_rehearsal: bool = Field(
        default=True,
        description="the shim template runs a shim's first steps once before forking shims "
        "(services.shim.rehearsal): fewer pages copied and caches filled per shim",
    )

    rpc_timeout_s: float = Field(default=30.0, description="default deadline of a control call")
    liveness_s: float = Field(
        default=3.0,
        description="a call whose service sends no frame (reply or heartbeat) for this long is Unavailable",
    )
    heartbeat_s: float = Field(default=1.0, description="interval of heartbeats on long-running calls")
    shim_idle_s: float = Field(
        default=30.0,
        ge=0,
        description="a shim with nothing to do for this long sleeps as a small native monitor until its task"
        " exits, prints, or is called (services/shim/hibernate.py); 0: never",
    )

    insecure_registries: list[str] = Field(
        default_factory=list,
        description="host[:port] or CIDR entries spoken to over plain HTTP (loopback always is)",
    )
    registry_mirrors: dict[str, list[str]] = Field(
        default_factory=dict, description="registry host -> mirror endpoints tried first"
    )
    registry_config: Path | None = Field(
        default=None, description="Docker-format config.json with credentials (default ~/.docker/config.json)"
    )
    max_concurrent_downloads: int = Field(default=3, ge=1, le=32)

    journal_max_age_s: float = Field(default=7 * 24 * 3600.0, description="events older than this are compacted")
    journal_max_events: int = Field(default=1_000_000, description="the journal keeps at most this many events")
    events_after_wait_s: float = Field(
        default=30.0, ge=0, description="how long an event may wait for the event it must follow"
    )
    journal_compact_interval_s: float = Field(default=60.0, gt=0, description="how often the journal compacts")

    def env(self) -> dict[str, str]:
        """Return the environment that makes a child process see these same directories."""
        env = dict(os.environ)
        env["DOCKYARD_ROOT"] = str(self.root)
        env["DOCKYARD_STATE"] = str(self.state)
        return env

    def _lookup(self) -> Mapping[str, str]:
        """``env()`` for reading only (the paths and endpoints below): the environment is not
        copied (it was, a dict of the whole environment per call: ~250 per ``run --rm``)."""
        return ChainMap({"DOCKYARD_ROOT": str(self.root), "DOCKYARD_STATE": str(self.state)}, os.environ)

    def control_endpoint(self, service: str) -> str:
        """Return the ROUTER endpoint of ``service`` (see ``common.endpoints``)."""
        return endpoints.control_endpoint(service, self._lookup())

    @property
    def events_publish_endpoint(self) -> str:
        return endpoints.events_publish_endpoint(self._lookup())

    @property
    def events_subscribe_endpoint(self) -> str:
        return endpoints.events_subscribe_endpoint(self._lookup())

    @property
    def gateway_socket(self) -> str:
        return endpoints.gateway_socket_path(self._lookup())

    def shim_endpoint(self, namespace: str, container_id: str) -> str:
        return endpoints.shim_endpoint(namespace, container_id, self._lookup())

    def bundle_dir(self, namespace: str, container_id: str) -> Path:
        return Path(endpoints.bundle_dir(namespace, container_id, self._lookup()))

    def container_dir(self, namespace: str, container_id: str) -> Path:
        return Path(endpoints.container_dir(namespace, container_id, self._lookup()))

    @property
    def runtime_root(self) -> Path:
        return Path(endpoints.runtime_root(self.runtime, self._lookup()))

    def root_of_runtime(self, runtime: str) -> str:
        """``--root`` handed to ``runtime`` (a container's own runtime, not necessarily ``self.runtime``)."""
        return endpoints.runtime_root(runtime, self._lookup())

    def seccomp_cache_dir(self, runtime: str) -> str:
        """Where ``runtime``'s compiled seccomp filters are kept (``endpoints.seccomp_cache_dir``)."""
        return endpoints.seccomp_cache_dir(runtime, self._lookup())

    def service_dir(self, service: str) -> Path:
        """Return ``<root>/<service>``, the persistent directory a service owns alone."""
        return self.root / service

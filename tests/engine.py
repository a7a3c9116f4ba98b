"""Helpers for execution tests against the real services: images, runs, leftovers.

``Engine`` wraps an ``Instance`` with events, image, snapshot and execution started and
a real busybox image (built by ``deploy/mkimage`` from the host's busybox-static) loaded
through ``dockyard load``; ``leftovers()`` lists what a test must not leave behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from deploy import mkimage
from tests.harness import Instance, mounts_under, pids_of_instance

SERVICES = ("events", "image", "snapshot", "execution")
_ROOTFS: bytes | None = None


def busybox_layer() -> bytes:
    global _ROOTFS
    if _ROOTFS is None:
        _ROOTFS = mkimage.busybox_rootfs_tar()
    return _ROOTFS


def prepare_runtime(runtime: str) -> None:
    """crun 1.8 refuses this host's hybrid cgroup layout until hugetlb has a v1 hierarchy
    (shared/peers/RESULTS.md): mount it once, if it is not mounted yet."""
    if os.path.basename(runtime) != "crun":
        return
    point = "/sys/fs/cgroup/hugetlb"
    unified = "/sys/fs/cgroup/unified/cgroup.controllers"
    if not os.path.exists(unified) or "hugetlb" not in Path(unified).read_text().split():
        return
    os.makedirs(point, exist_ok=True)
    if subprocess.run(["mountpoint", "-q", point]).returncode != 0:
        subprocess.run(["mount", "-t", "cgroup", "-o", "hugetlb", "cgroup", point], check=True)


class Engine:
    """A running Dockyard instance for execution tests (``DOCKYARD_RUNTIME`` picks runc or crun)."""

    def __init__(self, inst: Instance) -> None:
        self.inst = inst
        prepare_runtime(inst.env.get("DOCKYARD_RUNTIME", "runc"))
        inst.start(*SERVICES)
        self.load("busybox:latest")

    def load(self, name: str, config: dict[str, Any] | None = None, layers: Sequence[bytes] = ()) -> None:
        """Build an image (busybox + ``layers``, image ``config`` merged) and ``dockyard load`` it."""
        img = mkimage.build_image(name, [busybox_layer(), *layers], config=config)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "image.tar")
            mkimage.write_docker_archive([img], path)
            self.cli("load", "-i", path, check=True)

    def cli(
        self, *args: str, input: bytes | None = None, timeout: float = 120, check: bool = False
    ) -> subprocess.CompletedProcess[bytes]:
        return self.inst.cli(*args, input=input, timeout=timeout, check=check)

    def run(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        return self.cli("run", *args, **kw)

    def inspect(self, ref: str) -> dict[str, Any]:
        with self.inst.client("execution") as c:
            return c.call("execution.inspect", {"id": ref})  # type: ignore[no-any-return]

    def containers(self) -> list[dict[str, Any]]:
        with self.inst.client("execution") as c:
            return c.call("execution.list", {"all": True})["containers"]  # type: ignore[no-any-return]

    def events(self, container_id: str | None = None) -> list[dict[str, Any]]:
        with self.inst.client("events") as c:
            evs = list(c.stream("events.replay", {}))
        if container_id is None:
            return evs
        return [e for e in evs if container_id in (e["event"].get("container_id"), e["event"].get("id"))]

    def topics(self, container_id: str) -> list[str]:
        return [e["topic"] for e in self.events(container_id)]

    def leftovers(self) -> dict[str, list[str]]:
        """Container mounts, shims and runtime containers still present (all should be empty)."""
        return leftovers(self.inst.state)

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 15.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"{what} not met within {timeout_s}s")

    def assert_clean(self) -> None:
        """No container mounts, shims or runtime containers left (after removing every container)."""
        self.wait_until(lambda: not any(self.leftovers().values()), 10, f"clean ({self.leftovers()})")


def leftovers(state: str) -> dict[str, list[str]]:
    """The container mounts, shims (``pid cmdline``) and runtime containers of the instance
    whose state directory is ``state``."""
    mounts = mounts_under(os.path.join(state, "tasks"))
    shims = []
    for pid in pids_of_instance(state):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if "services.shim " in cmd + " " or comm == "dockyard-shim":
            shims.append(f"{pid} {cmd}")
    runtime = []
    rt_dir = Path(state) / "runtime"
    if rt_dir.is_dir():
        for root in rt_dir.iterdir():
            binary = shutil.which(root.name) or root.name
            out = subprocess.run([binary, "--root", str(root), "list", "-q"], capture_output=True, text=True).stdout
            runtime += out.split()
    return {"mounts": mounts, "shims": shims, "runtime": runtime}


def ps_names(engine: Engine) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in engine.containers()}


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)

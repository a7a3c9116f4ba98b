"""A private Dockyard instance for the benchmarks, started the way a user starts it.

``PrivateDockyard`` picks a fresh ``state`` under ``/run/dyb-XXXXXX`` and ``root`` under
``/var/lib/dyb-XXXXXX`` (the file systems of the defaults ``/run/dockyard`` and
``/var/lib/dockyard``, and of containerd's ``/run/containerd`` and
``/var/lib/containerd``), runs ``dockyard up`` there (the supervisor starts events,
snapshot, image, execution and gateway; ``up`` puts the empty state directory on a tmpfs
of its own when ``/run`` is not one, ``common.statefs``, where containerd keeps its state
on ``/run`` as Debian's package sets it up: ext4 on this project's CI machines), loads the
busybox image built by ``deploy/mkimage.py`` and gives the argv of the CLI (``cli_argv``)
and the environment (``env``) that talk to that instance.
``close()`` removes everything it made, through ``tests.harness.Instance.cleanup``
(every process of the instance, runtime containers, mounts, directories).

The CLI is what a user runs: ``<repo>/.venv/bin/dockyard`` when ``make setup`` made it,
otherwise ``python -m cli`` with the running interpreter.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.harness import PROJECT, Instance


def cli_argv() -> list[str]:
    """The command a user types for ``dockyard`` (see module docstring)."""
    script = PROJECT / ".venv" / "bin" / "dockyard"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "cli"]


class PrivateDockyard:
    """See module docstring. ``settings`` become ``DOCKYARD_<NAME>`` variables."""

    def __init__(self, *, trace_path: str | None = None, **settings: str) -> None:
        base = tempfile.mkdtemp(prefix="dyb-", dir="/run")
        self.inst = Instance(base=base, **settings)
        self.root_base = tempfile.mkdtemp(prefix="dyb-", dir="/var/lib")
        self.inst.root = os.path.join(self.root_base, "root")
        os.makedirs(self.inst.root)
        os.rmdir(os.path.join(base, "root"))
        os.rmdir(os.path.join(base, "state", "logs"))  # `up` finds the state directory empty, as a user's
        self.inst.env["DOCKYARD_ROOT"] = self.inst.root
        if trace_path:
            self.inst.env["DOCKYARD_TRACE"] = trace_path
        self.cli = cli_argv()

    @property
    def env(self) -> dict[str, str]:
        return self.inst.env

    @property
    def state(self) -> str:
        return self.inst.state

    def run(
        self, *args: str, check: bool = True, timeout: float = 120, **kw: Any
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``dockyard <args>`` against this instance."""
        proc = subprocess.run([*self.cli, *args], env=self.env, cwd=PROJECT, capture_output=True, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(f"dockyard {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}")
        return proc

    def up(self) -> None:
        """``dockyard up`` (every service), then wait until each is healthy."""
        self.run("up", timeout=120)

    def load_busybox(self, tar_path: str) -> None:
        """``dockyard load -i <docker-archive>``."""
        self.run("load", "-i", tar_path, timeout=300)

    def service_pids(self) -> dict[str, int]:
        """``{service: pid}`` of the running services (from their pid files)."""
        out = {}
        for path in Path(self.state).glob("*.pid"):
            try:
                out[path.stem] = int(path.read_text().strip())
            except (OSError, ValueError):
                continue
        return out

    def close(self) -> None:
        """Stop the services and remove every container, mount, process and file of the instance."""
        try:
            subprocess.run(
                [*self.cli, "down", "--timeout", "5"], env=self.env, cwd=PROJECT, capture_output=True, timeout=60
            )
        except subprocess.TimeoutExpired:
            pass
        self.inst.cleanup()
        shutil.rmtree(self.root_base, ignore_errors=True)

    def __enter__(self) -> PrivateDockyard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout_s`` passed (bench set-up only)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


__all__ = ["PROJECT", "PrivateDockyard", "cli_argv", "wait_until"]

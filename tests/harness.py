"""Run real Dockyard services for tests, on private directories, and clean up after them.

``Instance`` owns a fresh ``root`` and ``state`` under ``/tmp/dy-XXXXXX`` (short, so
unix socket paths fit), starts services as separate processes (``python -m
services.<name>``, each in its own session, as ``dockyard up`` does), and on
``cleanup()`` removes everything they made even if the test failed: service
processes, shims (found by their ``DOCKYARD_STATE``), runc/crun containers in the
instance's runtime roots, mounts under its directories, and the directories.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent


def _proc_env(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def pids_of_instance(state: str) -> list[int]:
    """PIDs of every live process whose environment has ``DOCKYARD_STATE=state``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            pid = int(entry)
            if _proc_env(pid).get("DOCKYARD_STATE") == state and _alive(pid):
                found.append(pid)
    return found


def mounts_under(*dirs: str) -> list[str]:
    """Mount points at or below any of ``dirs``, deepest first."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if any(point == d or point.startswith(d.rstrip("/") + "/") for d in dirs):
                points.append(point)
    return sorted(set(points), key=lambda p: p.count("/"), reverse=True)


class Instance:
    """One private Dockyard instance for a test (see module docstring)."""

    def __init__(self, base: str | None = None, **settings: str) -> None:
        self.base = base or tempfile.mkdtemp(prefix="dy-", dir="/tmp")
        self.root = os.path.join(self.base, "root")
        self.state = os.path.join(self.base, "state")
        os.makedirs(self.root, exist_ok=True)
        os.makedirs(self.state, exist_ok=True)
        self.env = dict(os.environ)
        self.env.update({"DOCKYARD_ROOT": self.root, "DOCKYARD_STATE": self.state, "PYTHONPATH": str(PROJECT)})
        self.env.update({f"DOCKYARD_{k.upper()}": v for k, v in settings.items()})
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = Path(self.state) / "logs"
        self.logs.mkdir(exist_ok=True)

    # -- services ---------------------------------------------------------------------------
    def start(self, *services: str, timeout_s: float = 20.0) -> None:
        """Start ``services`` (in order) and wait until each answers its health check."""
        for name in services:
            log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                env=self.env,
                cwd=PROJECT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
            log.close()
        for name in services:
            self.wait_healthy(name, timeout_s)

    def wait_healthy(self, name: str, timeout_s: float = 20.0) -> dict[str, Any]:
        from common import errors

        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{name} service exited with {proc.returncode}:\n{self.log_tail(name)}")
            try:
                with self.client(name, timeout_s=1.0, liveness_s=1.0, connect_timeout_s=0.5) as c:
                    return c.call(f"{name}.health", {})  # type: ignore[no-any-return]
            except errors.Unavailable as exc:
                last = exc
                time.sleep(0.05)
        raise RuntimeError(f"{name} service not healthy after {timeout_s}s ({last}):\n{self.log_tail(name)}")

    def pid(self, name: str) -> int:
        return int((Path(self.state) / f"{name}.pid").read_text())

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to service ``name`` and wait for it to exit."""
        proc = self.procs.get(name)
        pid = proc.pid if proc else self.pid(name)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if proc:
            proc.wait(timeout=15)
        else:
            for _ in range(300):
                if not _alive(pid):
                    break
                time.sleep(0.05)

    def stop_services(self) -> None:
        for _name, proc in self.procs.items():
            if proc.poll() is None:
                proc.terminate()
        for _name, proc in self.procs.items():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def client(self, service: str, **kw: Any) -> Any:
        from common.rpc.client import Client

        return Client(service, self.endpoint(service), **kw)

    def endpoint(self, service: str) -> str:
        from common import endpoints

        return endpoints.control_endpoint(service, self.env)

    def log_tail(self, name: str, lines: int = 40) -> str:
        try:
            return "\n".join((self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def load_busybox(self) -> None:
        """Build the busybox image from the host's busybox-static and ``dockyard load`` it."""
        archive = Path(self.base) / "busybox.tar"
        if not archive.exists():
            subprocess.run(
                [sys.executable, str(PROJECT / "deploy" / "mkimage.py"), "--format", "docker", "-o", str(archive)],
                check=True,
                capture_output=True,
            )
        self.cli("load", "-i", str(archive), check=True)

    def cli(
        self, *args: str, input: bytes | None = None, timeout: float = 120, check: bool = False
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``dockyard <args>`` against this instance and return the completed process."""
        proc = subprocess.run(
            [sys.executable, "-m", "cli", *args],
            env=self.env,
            cwd=PROJECT,
            input=input,
            capture_output=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"dockyard {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode()}")
        return proc

    def cli_popen(self, *args: str) -> subprocess.Popen[bytes]:
        """Start ``dockyard <args>`` against this instance without waiting: stdin from
        /dev/null, stdout and stderr piped (bytes)."""
        return subprocess.Popen(
            [sys.executable, "-m", "cli", *args],
            env=self.env,
            cwd=PROJECT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    # -- cleanup -----------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Remove every process, container, mount and file this instance made."""
        self.stop_services()
        # anything else started for this instance (supervisor, shims, services started by `up`)
        for _ in range(3):
            pids = pids_of_instance(self.state)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        runtime_dir = Path(self.state) / "runtime"
        if runtime_dir.is_dir():
            for rt_root in runtime_dir.iterdir():
                binary = shutil.which(rt_root.name) or rt_root.name
                listing = subprocess.run([binary, "--root", str(rt_root), "list", "-q"], capture_output=True, text=True)
                for cid in listing.stdout.split():
                    subprocess.run([binary, "--root", str(rt_root), "kill", cid, "KILL"], capture_output=True)
                    subprocess.run([binary, "--root", str(rt_root), "delete", "--force", cid], capture_output=True)
        for point in mounts_under(self.root, self.state):
            if subprocess.run(["umount", point], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)

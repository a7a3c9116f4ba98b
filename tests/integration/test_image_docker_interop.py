"""Archives cross between Dockyard and the real Docker engine in both directions.

``dockyard save`` must write a docker-archive that ``docker load`` reads, and a
``docker save`` archive must load and run in Dockyard (issue 3, point 4). The test
starts a private containerd and dockerd (Debian's ``containerd`` and ``docker.io``)
on directories of its own, with no network set-up, and stops them afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import need_root
from tests.gateway_util import busybox_archive
from tests.harness import Instance, mounts_under

DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker")


class Dockerd:
    """A private containerd + dockerd pair under one temp dir."""

    def __init__(self) -> None:
        self.base = tempfile.mkdtemp(prefix="dyd-", dir="/tmp")
        self.sock = os.path.join(self.base, "docker.sock")
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        b = self.base
        ctd_sock = os.path.join(b, "containerd.sock")
        with open(os.path.join(b, "containerd.log"), "wb") as log:
            self.procs.append(
                subprocess.Popen(
                    [
                        "containerd",
                        "--root",
                        f"{b}/ctd-root",
                        "--state",
                        f"{b}/ctd-state",
                        "--address",
                        ctd_sock,
                        "--config",
                        "/dev/null",
                    ],
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            )
        self._wait(lambda: os.path.exists(ctd_sock), "containerd")
        with open(os.path.join(b, "dockerd.log"), "wb") as log:
            self.procs.append(
                subprocess.Popen(
                    [
                        "dockerd",
                        "--containerd",
                        ctd_sock,
                        "--data-root",
                        f"{b}/data",
                        "--exec-root",
                        f"{b}/exec",
                        "--pidfile",
                        f"{b}/docker.pid",
                        "-H",
                        f"unix://{self.sock}",
                        "--iptables=false",
                        "--bridge=none",
                        "--storage-driver=overlay2",
                    ],
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            )
        self._wait(lambda: self.docker("version").returncode == 0, "dockerd", timeout_s=60)

    def _wait(self, ok, what: str, timeout_s: float = 30) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ok():
                return
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{what} exited: {Path(self.base, what + '.log').read_text()[-2000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"{what} did not come up in {timeout_s} s")

    def docker(
        self, *args: str, input: bytes | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[bytes]:
        env = {**os.environ, "DOCKER_HOST": f"unix://{self.sock}", "DOCKER_CONFIG": os.path.join(self.base, "cfg")}
        return subprocess.run([str(DOCKER), *args], env=env, input=input, capture_output=True, timeout=timeout)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        # shims of containers that survived (none should), then mounts, then files
        for line in subprocess.run(["pgrep", "-f", self.base], capture_output=True, text=True).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(line), signal.SIGKILL)
        for point in mounts_under(self.base):
            subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def dockerd() -> Iterator[Dockerd]:
    need_root()
    if not DOCKER or not shutil.which("dockerd") or not shutil.which("containerd"):
        pytest.skip("docker.io and containerd are not installed")
    d = Dockerd()
    try:
        d.start()
        yield d
    finally:
        d.stop()


def test_docker_loads_and_runs_what_dockyard_saves(dockerd: Dockerd, dy: Instance) -> None:
    archive = Path(dy.base) / "saved.tar"
    dy.cli("tag", "busybox", "interop/saved:v1", check=True)
    dy.cli("save", "-o", str(archive), "interop/saved:v1", check=True)
    loaded = dockerd.docker("load", "-i", str(archive))
    assert loaded.returncode == 0, loaded.stderr
    assert b"interop/saved:v1" in loaded.stdout
    ours = dy.cli("image", "inspect", "interop/saved:v1", check=True).stdout
    theirs = dockerd.docker("image", "inspect", "--format", "{{.Id}}", "interop/saved:v1").stdout.decode().strip()
    assert theirs and theirs.encode() in ours  # the same image id (config digest) on both sides
    run = dockerd.docker("run", "--rm", "--network", "none", "interop/saved:v1", "echo", "saved by dockyard")
    assert (run.returncode, run.stdout) == (0, b"saved by dockyard\n"), run.stderr


def test_dockyard_loads_and_runs_what_docker_saves(dockerd: Dockerd, dy: Instance) -> None:
    src = Path(dy.base) / "for-docker.tar"
    busybox_archive(src)
    assert dockerd.docker("load", "-i", str(src)).returncode == 0
    assert dockerd.docker("tag", "busybox:latest", "fromdocker/bb:2").returncode == 0
    saved = Path(dy.base) / "docker-saved.tar"
    r = dockerd.docker("save", "-o", str(saved), "fromdocker/bb:2")
    assert r.returncode == 0, r.stderr
    dy.cli("load", "-i", str(saved), check=True)
    out = dy.cli("run", "--rm", "fromdocker/bb:2", "echo", "saved by docker", check=True)
    assert out.stdout == b"saved by docker\n"

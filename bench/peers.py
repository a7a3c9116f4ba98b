"""The peers Dockyard is measured against, started and stopped by the bench itself.

What is installed is used (``runc``, ``crun``, ``containerd``/``ctr``, ``dockerd`` with
docker.io's client ``/usr/bin/docker``, ``podman``); what is missing is skipped. The
daemons are started by hand as on a host without systemd (``containerd``, then
``dockerd --containerd=<its socket> --add-runtime crun=/usr/bin/crun``), logs and pid
files in the bench's work directory, and stopped by those pids only. A daemon already
running that the bench did not start is used as it is and left running.

Host quirks handled here (see the peer notes of the project): crun needs the hugetlb
cgroup v1 hierarchy mounted on a v1 hybrid host (``fix_cgroup_hybrid``); podman's stock
rlimits exceed the hard limits (no CAP_SYS_RESOURCE), so podman runs with a private
``CONTAINERS_CONF`` pinning them; ``/usr/local/bin/docker`` may shadow docker.io's
client, so the bench calls ``/usr/bin/docker``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

DOCKER = "/usr/bin/docker"
CTR = "ctr"
CONTAINERD_SOCK = "/run/containerd/containerd.sock"
DOCKER_SOCK = "/var/run/docker.sock"


def have(binary: str) -> bool:
    """Is ``binary`` installed (a path, or a name on PATH)?"""
    return os.path.exists(binary) if binary.startswith("/") else shutil.which(binary) is not None


def _ok(cmd: list[str], timeout: float = 5.0, env: dict[str, str] | None = None) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout, env=env).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def wait_for(cmd: list[str], timeout_s: float) -> bool:
    """Run ``cmd`` until it succeeds or ``timeout_s`` passed (start-up of a daemon)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _ok(cmd, timeout=2.0):
            return True
        time.sleep(0.1)
    return False


def fix_cgroup_hybrid() -> list[str]:
    """Bind every controller the cgroup2 mount still offers to a v1 hierarchy (crun on a hybrid host).

    Returns the controllers mounted now (empty when nothing was needed).
    """
    unified = Path("/sys/fs/cgroup/unified/cgroup.controllers")
    mounted: list[str] = []
    try:
        controllers = unified.read_text().split()
    except OSError:
        return mounted
    for c in controllers:
        target = f"/sys/fs/cgroup/{c}"
        if os.path.ismount(target):
            continue
        os.makedirs(target, exist_ok=True)
        if subprocess.run(["mount", "-t", "cgroup", "-o", c, "cgroup", target], capture_output=True).returncode == 0:
            mounted.append(c)
    return mounted


def podman_env(work: Path) -> dict[str, str]:
    """The environment podman runs with: a private containers.conf within the hard rlimits."""
    conf = work / "containers.conf"
    hard_nofile = _hard_limit("RLIMIT_NOFILE")
    conf.write_text(
        "# written by dockyard bench: rlimits within the hard limits (no CAP_SYS_RESOURCE)\n"
        "[containers]\n"
        f'default_ulimits = ["nofile={hard_nofile}:{hard_nofile}", "nproc=32768:32768"]\n'
    )
    env = dict(os.environ)
    env["CONTAINERS_CONF"] = str(conf)
    return env


def _hard_limit(name: str) -> int:
    import resource

    hard = resource.getrlimit(getattr(resource, name))[1]
    return 1048576 if hard == resource.RLIM_INFINITY else int(hard)


class Daemon:
    """A daemon process the bench started (or found running: then ``ours`` is False)."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes] | None, ours: bool, tmpfs: str = "") -> None:
        self.name = name
        self.proc = proc
        self.ours = ours
        self.tmpfs = tmpfs
        """A tmpfs the bench mounted on the daemon's state directory (``state_on_tmpfs``), unmounted by ``stop``."""

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; only a daemon the bench started."""
        if not self.ours or self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.tmpfs:
            subprocess.run(["umount", "-l", self.tmpfs], capture_output=True, check=False)


def state_on_tmpfs(state: str, shim_exe: str) -> str:
    """Mount a tmpfs on a peer daemon's state directory ``state`` before the bench starts it,
    as a systemd host's ``/run`` is (``python -m bench --peer-state-tmpfs``). Not when it is on
    one already, nor while a shim of that daemon (``shim_exe``) still runs (its state is
    there). Returns the mount point, or "" when nothing was mounted."""
    from common import statefs

    os.makedirs(state, exist_ok=True)
    if statefs.is_volatile(state) or pids_by_exe(shim_exe):
        return ""
    statefs.mount_tmpfs(state)
    return state


def start_containerd(work: Path, state_tmpfs: bool = False) -> Daemon | None:
    """``containerd`` (Debian's config), or the one already answering; None if not installed.
    ``state_tmpfs``: its ``/run/containerd`` on a tmpfs (``state_on_tmpfs``) when it starts it."""
    if not have("containerd") or not have(CTR):
        return None
    if os.path.exists(CONTAINERD_SOCK) and _ok([CTR, "--connect-timeout", "1s", "version"]):
        return Daemon("containerd", None, ours=False)
    tmpfs = state_on_tmpfs("/run/containerd", "containerd-shim-runc-v2") if state_tmpfs else ""
    log = open(work / "containerd.log", "ab")  # noqa: SIM115 - handed to the daemon
    proc = subprocess.Popen(["containerd"], stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd="/")
    log.close()
    daemon = Daemon("containerd", proc, ours=True, tmpfs=tmpfs)
    if not wait_for([CTR, "--connect-timeout", "200ms", "version"], 30):
        daemon.stop()
        raise RuntimeError(f"containerd did not come up; see {work}/containerd.log")
    return daemon


def start_dockerd(work: Path) -> Daemon | None:
    """``dockerd`` on containerd's socket with crun as an extra runtime; None if not installed."""
    if not have("dockerd") or not have(DOCKER):
        return None
    if os.path.exists(DOCKER_SOCK) and _ok([DOCKER, "version"]):
        return Daemon("dockerd", None, ours=False)
    log = open(work / "dockerd.log", "ab")  # noqa: SIM115 - handed to the daemon
    cmd = ["dockerd", f"--containerd={CONTAINERD_SOCK}", "--add-runtime", "crun=/usr/bin/crun"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd="/")
    log.close()
    daemon = Daemon("dockerd", proc, ours=True)
    if not wait_for([DOCKER, "version"], 60):
        daemon.stop()
        raise RuntimeError(f"dockerd did not come up; see {work}/dockerd.log")
    return daemon


def rss_pss_kib(pid: int) -> tuple[int, int]:
    """``(VmRSS, Pss)`` of ``pid`` in KiB (0, 0 when it is gone)."""
    rss = pss = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def pids_by_exe(basename: str) -> list[int]:
    """Pids of the processes whose executable's base name is ``basename``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.path.basename(os.readlink(f"/proc/{entry}/exe")) == basename:
                out.append(int(entry))
    return out


def pids_by_comm(comm: str) -> list[int]:
    """Pids of the processes named ``comm`` (``/proc/<pid>/comm``)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if Path(f"/proc/{entry}/comm").read_text().strip() == comm:
                out.append(int(entry))
    return out

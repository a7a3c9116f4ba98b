"""The benchmark cases: Dockyard and its peers side by side, runs alternated.

Every latency case runs each tool once per round, tools in a rotated order, for
``runs`` rounds (after ``warmup`` rounds that are not kept), so load that comes and
goes on the host is spread over every tool alike. Each timed command starts after
``gap_ms`` of quiet (100 ms by default): a command right after another tool's rode on
that tool's kernel grace period for cgroup moves (README, The kernel's part), so the
figures depended on the order of the tools; after a gap every command pays what a lone
one pays. Times are wall-clock milliseconds
of the whole command, measured around the process from the bench (the same way for
every tool). A sample whose command failed is recorded as an error, not as a time.

Cases (``Suite.run_all``):

- ``run --rm true``: runc and crun on a prepared bundle of the same rootfs (the bare
  runtimes), Dockyard (runc and ``--runtime crun``), ``ctr run --rm`` (runc, runc with
  ``--seccomp`` as Dockyard, docker and podman apply a default profile, and
  ``--runc-binary crun``), ``docker run --rm --network none``, ``podman run --rm
  --network none``;
- ``run -d`` and ``rm -f`` of a ``sleep`` container, timed apart;
- ``exec true`` in a running container (runc/crun exec as the bare runtimes; ctr's in a
  container with and without ``--seccomp``);
- 20 and 100 detached starts at once: wall time until every CLI returned, then all
  verified running, then removed (timed too); per-shim RSS/PSS while 20 run; each burst
  starts after ``gap_ms`` of quiet too, tools in a rotated order from round to round;
- ``ps`` with 100 containers running;
- pull of a 100 MB+ multi-layer image from a local registry, from empty stores;
- idle RSS/PSS of each Dockyard service and of each peer daemon.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from bench import peers
from bench.dockyard import PrivateDockyard
from common.settings import Settings
from deploy import mkimage
from services.shim import idle
from tests.registry import Registry, skopeo_copy

Cmd = list[str]


class Sample:
    """One tool's samples in one case: times (ms) and errors."""

    def __init__(self) -> None:
        self.times_ms: list[float] = []
        self.errors: list[str] = []

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"samples_ms": [round(t, 2) for t in self.times_ms], "errors": self.errors[:5]}
        out["n_errors"] = len(self.errors)
        if self.times_ms:
            ordered = sorted(self.times_ms)
            out["median_ms"] = round(statistics.median(ordered), 2)
            out["p10_ms"] = round(ordered[int(0.1 * (len(ordered) - 1))], 2)
            out["p90_ms"] = round(ordered[int(0.9 * (len(ordered) - 1))], 2)
            out["min_ms"] = round(ordered[0], 2)
        return out


def timed(cmd: Cmd, env: dict[str, str] | None = None, timeout: float = 300) -> tuple[float, str]:
    """Run ``cmd``; ``(wall ms, error text or '')``."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=env, timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        return (time.perf_counter() - t0) * 1000, f"timeout: {' '.join(cmd)}"
    ms = (time.perf_counter() - t0) * 1000
    if proc.returncode != 0:
        return ms, f"exit {proc.returncode}: {' '.join(cmd)}: {proc.stderr.decode(errors='replace').strip()[-300:]}"
    return ms, ""


def quiet(cmd: Cmd, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    """Run a set-up or clean-up command (never timed; failures are the caller's business).

    A command still running after ``timeout`` seconds is killed and counts as failed
    (returncode -9, ``stderr`` says so): a peer that hangs must not stop the bench.
    """
    try:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, -9, b"", f"timed out after {timeout:.0f} s".encode())


class Tool:
    """One contestant: its name and how it does each case (None: it does not take part)."""

    def __init__(self, name: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.env = env


class Suite:
    """See module docstring. ``work`` holds bundles, logs and the registry's data."""

    def __init__(self, work: Path, *, runs: int = 20, warmup: int = 3, big_mb: int = 140,
                 pull_runs: int = 3, conc_iters: int = 8, log: Callable[[str], None] = print,
                 peer_state_tmpfs: bool = False, gap_ms: float = 100.0) -> None:  # fmt: skip
        self.work = work
        self.gap_s = gap_ms / 1000
        self.runs = runs
        self.warmup = warmup
        self.big_mb = big_mb
        self.pull_runs = pull_runs
        self.conc_iters = conc_iters
        self.peer_state_tmpfs = peer_state_tmpfs
        self.log = log
        self.results: dict[str, dict[str, Sample]] = {}
        self.memory: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []
        self.commands: dict[str, dict[str, str]] = {}
        self.daemons: list[peers.Daemon] = []
        self.dy: PrivateDockyard | None = None
        self.registry: Registry | None = None
        self.image = ""
        self.big = ""
        self.bundle = work / "bundle"
        self.sleep_bundle = work / "bundle-sleep"
        self.runtime_root = work / "runtime-root"
        self.podman_env: dict[str, str] = {}
        self.have: dict[str, bool] = {}

    # -- set-up ----------------------------------------------------------------------------------------
    def setup(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        mounted = peers.fix_cgroup_hybrid()
        if mounted:
            self.notes.append(f"mounted the v1 cgroup controller(s) {', '.join(mounted)} so that crun can run")
        self.have = {
            "runc": peers.have("runc"),
            "crun": peers.have("crun"),
            "ctr": peers.have("containerd") and peers.have(peers.CTR),
            "docker": peers.have("dockerd") and peers.have(peers.DOCKER),
            "podman": peers.have("podman"),
            "skopeo": peers.have("skopeo"),
        }
        self.log("building the images (busybox, and a 100 MB+ one for pulls)")
        layer = mkimage.busybox_rootfs_tar()
        busybox = mkimage.build_image("bench/busybox:latest", [layer])
        layout = self.work / "busybox.oci.tar"
        mkimage.write_oci_layout([busybox], str(layout))
        self.registry = Registry(self.work / "registry").start()
        self.image = f"{self.registry.host}/bench/busybox:latest"
        skopeo_copy(f"oci-archive:{layout}:latest", f"docker://{self.image}")
        self.big = f"{self.registry.host}/bench/big:latest"
        from bench import pull as bench_pull  # the image engineer's 100 MB+ multi-layer image, cached

        skopeo_copy(f"oci:{bench_pull.build(self.big_mb)}:bench", f"docker://{self.big}")
        self._bundles(layer)
        self.log("starting the peers' daemons")
        if self.have["ctr"]:
            d = peers.start_containerd(self.work, state_tmpfs=self.peer_state_tmpfs)
            if d is not None:
                self.daemons.append(d)
                if d.tmpfs:
                    self.notes.append(f"containerd's state directory {d.tmpfs} on a tmpfs (--peer-state-tmpfs)")
                elif self.peer_state_tmpfs:
                    self.notes.append("--peer-state-tmpfs: containerd's state directory left as it was")
        if self.have["docker"] and self.have["ctr"]:
            d = peers.start_dockerd(self.work)
            if d is not None:
                self.daemons.append(d)
        else:
            self.have["docker"] = False
        if self.have["podman"]:
            self.podman_env = peers.podman_env(self.work)
        self.log("starting a private Dockyard instance")
        self.dy = PrivateDockyard()
        self.dy.up()
        self._pull_everywhere()

    def _bundles(self, layer: bytes) -> None:
        """runc bundles of the same rootfs: ``true`` and ``sleep 3600`` (``runc spec`` defaults)."""
        import io

        rootfs = self.work / "rootfs"
        if not rootfs.exists():
            tmp = Path(tempfile.mkdtemp(dir=self.work))
            with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
                tar.extractall(tmp)  # Debian's 3.11.2 has no ``filter``; trusted, our own image
            tmp.rename(rootfs)
        for bundle, args in ((self.bundle, ["true"]), (self.sleep_bundle, ["sleep", "3600"])):
            shutil.rmtree(bundle, ignore_errors=True)
            bundle.mkdir(parents=True)
            quiet(["runc", "spec", "--bundle", str(bundle)])
            spec = json.loads((bundle / "config.json").read_text())
            spec["root"]["path"] = str(rootfs)
            spec["root"]["readonly"] = True
            spec["process"]["terminal"] = False
            spec["process"]["args"] = args
            spec["process"].pop("rlimits", None)  # no CAP_SYS_RESOURCE here: stay within the hard limits
            (bundle / "config.json").write_text(json.dumps(spec))
        self.runtime_root.mkdir(exist_ok=True)

    def _pull_everywhere(self) -> None:
        assert self.dy is not None
        self.dy.run("pull", self.image, timeout=300)
        if self.have["ctr"]:
            quiet([peers.CTR, "images", "pull", "--plain-http", self.image])
        if self.have["docker"]:
            quiet([peers.DOCKER, "pull", "-q", self.image])
        if self.have["podman"]:
            quiet(["podman", "pull", "-q", "--tls-verify=false", self.image], env=self.podman_env)

    def teardown(self) -> None:
        """Remove the containers, stop Dockyard, the daemons and the registry: each step is
        tried even when one before it failed (a hung peer), and failures are logged."""
        steps: list[tuple[str, Callable[[], object]]] = [("containers", self._cleanup_containers)]
        for name in ("dyb-rx", "dyb-cx"):
            for rt in ("runc", "crun"):
                steps.append(
                    (f"{rt} {name}", partial(quiet, [rt, "--root", str(self.runtime_root / rt), "delete", "-f", name]))
                )
        if self.dy is not None:
            steps.append(("dockyard", self.dy.close))
        steps += [(d.name, d.stop) for d in reversed(self.daemons)]
        if self.registry is not None:
            steps.append(("registry", self.registry.stop))
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # the next steps still have to run
                self.log(f"teardown: {what}: {exc!r}"[:300])

    # -- helpers ---------------------------------------------------------------------------------------
    def dockyard(self, *args: str) -> Cmd:
        assert self.dy is not None
        return [*self.dy.cli, *args]

    def _env(self, tool: str) -> dict[str, str] | None:
        if tool.startswith("dockyard"):
            assert self.dy is not None
            return self.dy.env
        if tool.startswith("podman"):
            return self.podman_env
        return None

    def alternate(self, case: str, steps: dict[str, Callable[[int], list[tuple[str, Cmd]]]],
                  prepare: dict[str, Callable[[], Any]] | None = None, runs: int | None = None) -> None:  # fmt: skip
        """Run ``steps[tool](i)`` (a list of ``(label suffix, command)`` timed one after the other)
        for every tool, ``runs`` rounds in rotated order; ``prepare[tool]()`` runs untimed before."""
        runs = runs or self.runs
        tools = list(steps)
        results = self.results.setdefault(case, {})
        self.commands[case] = {t: " ; ".join(" ".join(c) for _s, c in steps[t](0)) for t in tools}
        for r in range(-self.warmup, runs):
            shift = r % len(tools)
            for tool in tools[shift:] + tools[:shift]:
                if prepare and tool in prepare:
                    prepare[tool]()
                for suffix, cmd in steps[tool](r):
                    if self.gap_s:
                        time.sleep(self.gap_s)
                    ms, err = timed(cmd, env=self._env(tool))
                    if r < 0:
                        continue
                    sample = results.setdefault(tool + suffix, Sample())
                    if err:
                        sample.errors.append(err)
                    else:
                        sample.times_ms.append(ms)

    # -- cases -----------------------------------------------------------------------------------------
    def case_run_rm(self) -> None:
        self.log("case: run --rm true")
        img = self.image
        steps: dict[str, Callable[[int], list[tuple[str, Cmd]]]] = {}
        if self.have["runc"]:
            steps["runc run (bundle)"] = lambda i: [("", ["runc", "--root", str(self.runtime_root / "runc"), "run",
                                                          "-b", str(self.bundle), "dyb-runc"])]  # fmt: skip
        if self.have["crun"]:
            steps["crun run (bundle)"] = lambda i: [("", ["crun", "--root", str(self.runtime_root / "crun"), "run",
                                                          "-b", str(self.bundle), "dyb-crun"])]  # fmt: skip
        steps["dockyard"] = lambda i: [("", self.dockyard("run", "--rm", img, "true"))]
        if self.have["crun"]:
            steps["dockyard --runtime crun"] = lambda i: [("", self.dockyard("run", "--rm", "--runtime", "crun", img,
                                                                             "true"))]  # fmt: skip
        if self.have["ctr"]:
            steps["ctr"] = lambda i: [("", [peers.CTR, "run", "--rm", img, "dyb-ctr", "true"])]
            # ctr applies no seccomp profile unless asked; Dockyard (like docker and podman) applies
            # the default one: this row compares like with like
            steps["ctr --seccomp"] = lambda i: [("", [peers.CTR, "run", "--rm", "--seccomp", img, "dyb-ctr", "true"])]
            if self.have["crun"]:
                ctr_crun = [peers.CTR, "run", "--rm", "--runc-binary", "/usr/bin/crun", img, "dyb-ctr", "true"]
                steps["ctr --runc-binary crun"] = lambda i: [("", ctr_crun)]
        if self.have["docker"]:
            steps["docker"] = lambda i: [("", [peers.DOCKER, "run", "--rm", "--network", "none", img, "true"])]
        if self.have["podman"]:
            steps["podman"] = lambda i: [("", ["podman", "run", "--rm", "--network", "none", img, "true"])]
        self.alternate("run --rm true", steps)

    def case_run_d_rm(self) -> None:
        self.log("case: run -d, rm -f")
        img = self.image
        steps: dict[str, Callable[[int], list[tuple[str, Cmd]]]] = {
            "dockyard": lambda i: [
                (": run -d", self.dockyard("run", "-d", "--name", "dyb-d", img, "sleep", "600")),
                (": rm -f", self.dockyard("rm", "-f", "dyb-d")),
            ]
        }
        if self.have["ctr"]:
            steps["ctr"] = lambda i: [
                (": run -d", [peers.CTR, "run", "-d", img, "dyb-d", "sleep", "600"]),
                (": rm -f", ["sh", "-c", f"{peers.CTR} t rm -f dyb-d && {peers.CTR} c rm dyb-d"]),
            ]
        if self.have["docker"]:
            steps["docker"] = lambda i: [
                (": run -d", [peers.DOCKER, "run", "-d", "--network", "none", "--name", "dyb-d", img, "sleep", "600"]),
                (": rm -f", [peers.DOCKER, "rm", "-f", "dyb-d"]),
            ]
        if self.have["podman"]:
            steps["podman"] = lambda i: [
                (": run -d", ["podman", "run", "-d", "--network", "none", "--name", "dyb-d", img, "sleep", "600"]),
                (": rm -f", ["podman", "rm", "-f", "-t", "0", "dyb-d"]),
            ]
        self.alternate("run -d / rm -f", steps)

    def case_exec(self) -> None:
        self.log("case: exec true")
        img = self.image
        assert self.dy is not None
        quiet(self.dockyard("run", "-d", "--name", "dyb-e", img, "sleep", "3600"), env=self.dy.env)
        steps: dict[str, Callable[[int], list[tuple[str, Cmd]]]] = {}
        for rt, name in (("runc", "dyb-rx"), ("crun", "dyb-cx")):
            if self.have[rt]:
                root = str(self.runtime_root / rt)
                quiet([rt, "--root", root, "delete", "-f", name])
                subprocess.run(
                    [rt, "--root", root, "run", "-d", "-b", str(self.sleep_bundle), name],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=60,
                )  # the container keeps its stdio: no pipes
                steps[f"{rt} exec"] = lambda i, rt=rt, root=root, name=name: [("", [rt, "--root", root, "exec", name,
                                                                                    "true"])]  # fmt: skip
        steps["dockyard"] = lambda i: [("", self.dockyard("exec", "dyb-e", "true"))]
        if self.have["ctr"]:
            quiet([peers.CTR, "run", "-d", img, "dyb-e", "sleep", "3600"])
            steps["ctr"] = lambda i: [("", [peers.CTR, "t", "exec", "--exec-id", f"x{i + 100}", "dyb-e", "true"])]
            # the runtime applies the container's seccomp profile to each exec too (see case_run_rm)
            quiet([peers.CTR, "run", "-d", "--seccomp", img, "dyb-es", "sleep", "3600"])
            steps["ctr --seccomp"] = lambda i: [("", [peers.CTR, "t", "exec", "--exec-id", f"x{i + 100}", "dyb-es",
                                                      "true"])]  # fmt: skip
        if self.have["docker"]:
            quiet([peers.DOCKER, "run", "-d", "--network", "none", "--name", "dyb-e", img, "sleep", "3600"])
            steps["docker"] = lambda i: [("", [peers.DOCKER, "exec", "dyb-e", "true"])]
        if self.have["podman"]:
            quiet(["podman", "run", "-d", "--network", "none", "--name", "dyb-e", img, "sleep", "3600"],
                  env=self.podman_env)  # fmt: skip
            steps["podman"] = lambda i: [("", ["podman", "exec", "dyb-e", "true"])]
        self.alternate("exec true", steps)
        for rt, name in (("runc", "dyb-rx"), ("crun", "dyb-cx")):
            if self.have[rt]:
                quiet([rt, "--root", str(self.runtime_root / rt), "delete", "-f", name])
        self._cleanup_containers()

    def _start_n(self, tool: str, n: int) -> tuple[float, list[str]]:
        """Start ``n`` detached ``sleep`` containers at once; ``(wall ms, errors)``."""
        img = self.image
        cmds: list[Cmd] = []
        for i in range(n):
            name = f"dyb-c{i}"
            if tool == "dockyard":
                cmds.append(self.dockyard("run", "-d", "--name", name, img, "sleep", "600"))
            elif tool == "ctr":
                cmds.append([peers.CTR, "run", "-d", img, name, "sleep", "600"])
            elif tool == "docker":
                cmds.append([peers.DOCKER, "run", "-d", "--network", "none", "--name", name, img, "sleep", "600"])
            elif tool == "podman":
                cmds.append(["podman", "run", "-d", "--network", "none", "--name", name, img, "sleep", "600"])
        env = self._env(tool)
        t0 = time.perf_counter()
        procs = [subprocess.Popen(c, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  env=env) for c in cmds]  # fmt: skip
        errors = []
        for p in procs:
            _out, err = p.communicate(timeout=600)
            if p.returncode != 0:
                errors.append(f"exit {p.returncode}: {err.decode(errors='replace').strip()[-300:]}")
        return (time.perf_counter() - t0) * 1000, errors

    def _running(self, tool: str) -> int:
        if tool == "dockyard":
            out = quiet(self.dockyard("ps", "-q", "--filter", "name=dyb-c"), env=self._env(tool)).stdout
            return len(out.split())
        if tool == "ctr":
            listing = quiet([peers.CTR, "t", "ls"]).stdout.decode()
            return sum(1 for line in listing.splitlines() if line.startswith("dyb-c") and "RUNNING" in line)
        base = [peers.DOCKER] if tool == "docker" else ["podman"]
        return len(quiet([*base, "ps", "-q", "--filter", "name=dyb-c"], env=self._env(tool)).stdout.split())

    def _remove_n(self, tool: str, n: int) -> tuple[float, list[str]]:
        names = [f"dyb-c{i}" for i in range(n)]
        env = self._env(tool)
        t0 = time.perf_counter()
        errors: list[str] = []
        if tool == "dockyard":
            cmds = [self.dockyard("rm", "-f", *names)]
        elif tool == "docker":
            cmds = [[peers.DOCKER, "rm", "-f", *names]]
        elif tool == "podman":
            cmds = [["podman", "rm", "-f", "-t", "0", *names]]
        else:
            cmds = [["sh", "-c", f"{peers.CTR} t rm -f {x} && {peers.CTR} c rm {x}"] for x in names]
        with ThreadPoolExecutor(max_workers=len(cmds)) as pool:
            for _ms, err in pool.map(lambda c: timed(c, env=env, timeout=600), cmds):
                if err:
                    errors.append(err)
        return (time.perf_counter() - t0) * 1000, errors

    def case_concurrent(self, n: int, iters: int) -> None:
        self.log(f"case: {n} concurrent detached starts")
        tools = ["dockyard"] + [t for t in ("ctr", "docker", "podman") if self.have[t]]
        start = self.results.setdefault(f"start {n} at once", {})
        remove = self.results.setdefault(f"remove {n}", {})
        self.commands[f"start {n} at once"] = {
            "dockyard": f"{n} x dockyard run -d --name dyb-cI IMG sleep 600 (all at once)",
            "ctr": f"{n} x ctr run -d IMG dyb-cI sleep 600",
            "docker": f"{n} x docker run -d --network none --name dyb-cI IMG sleep 600",
            "podman": f"{n} x podman run -d --network none --name dyb-cI IMG sleep 600",
        }
        for it in range(iters):
            for tool in tools[it % len(tools) :] + tools[: it % len(tools)]:
                if self.gap_s:
                    time.sleep(self.gap_s)
                ms, errors = self._start_n(tool, n)
                running = self._running(tool)
                s = start.setdefault(tool, Sample())
                if errors or running != n:
                    s.errors.append(f"{len(errors)} failed, {running}/{n} running; {errors[:1]}")
                else:
                    s.times_ms.append(ms)
                if it == 0 and n == 20:
                    time.sleep(2)
                    self._shim_memory(tool)
                if it == 0 and n == 100:
                    self.case_ps(tool)
                ms, errors = self._remove_n(tool, n)
                r = remove.setdefault(tool, Sample())
                if errors:
                    r.errors.append(f"{len(errors)} failed: {errors[:1]}")
                else:
                    r.times_ms.append(ms)
                self._cleanup_containers(tool)

    def case_ps(self, tool: str) -> None:
        """``ps`` with the 100 containers of ``tool`` running (called from ``case_concurrent``)."""
        cmd = {
            "dockyard": self.dockyard("ps"),
            "ctr": [peers.CTR, "t", "ls"],
            "docker": [peers.DOCKER, "ps"],
            "podman": ["podman", "ps"],
        }[tool]
        self.commands.setdefault("ps (100 running)", {})[tool] = " ".join(cmd)
        sample = self.results.setdefault("ps (100 running)", {}).setdefault(tool, Sample())
        for r in range(-self.warmup, self.runs):
            ms, err = timed(cmd, env=self._env(tool))
            if r >= 0:
                (sample.errors.append(err) if err else sample.times_ms.append(ms))

    def _shim_memory(self, tool: str) -> None:
        """RSS/PSS of each per-container process while 20 containers of ``tool`` run.

        Dockyard's shims twice: at once (awake, as ~2 s after their start), then once every one
        has gone to sleep as its idle monitor (``Settings.shim_idle_s``, 30 s by default), the
        state an idle container's shim stays in: that one is the goal's figure."""
        assert self.dy is not None
        if tool == "dockyard":
            pids = [p for p in peers.pids_by_comm("dockyard-shim") if _env_of(p).get("DOCKYARD_STATE") == self.dy.state]
            self._record_memory("dockyard-shim (awake, 2 s after start)", pids)
            deadline = time.monotonic() + Settings().shim_idle_s + 30
            while time.monotonic() < deadline and not all(idle.asleep(p) for p in pids):
                time.sleep(0.5)
            pids = [p for p in pids if idle.asleep(p)]
            label = "dockyard-shim"
        elif tool in ("ctr", "docker"):
            pids = peers.pids_by_exe("containerd-shim-runc-v2")
            label = f"containerd-shim-runc-v2 ({tool})"
        else:
            pids = peers.pids_by_exe("conmon")
            label = "conmon (podman)"
        self._record_memory(label, pids)

    def _record_memory(self, label: str, pids: list[int]) -> None:
        values = [peers.rss_pss_kib(p) for p in pids]
        values = [v for v in values if v[0]]
        if values:
            self.memory.setdefault("per container (20 running)", {})[label] = {
                "count": len(values),
                "rss_kib_median": statistics.median(v[0] for v in values),
                "pss_kib_median": statistics.median(v[1] for v in values),
            }

    def case_idle_memory(self) -> None:
        self.log("case: idle memory of the services")
        assert self.dy is not None
        time.sleep(2)
        out: dict[str, Any] = {}
        for name, pid in sorted(self.dy.service_pids().items()):
            rss, pss = peers.rss_pss_kib(pid)
            if rss:
                out[f"dockyard {name}"] = {"rss_kib": rss, "pss_kib": pss}
        for pid in peers.pids_by_comm("python") + peers.pids_by_comm("python3"):
            cmdline = _cmdline(pid)
            if "services.shim.template" in cmdline and _env_of(pid).get("DOCKYARD_STATE") == self.dy.state:
                rss, pss = peers.rss_pss_kib(pid)
                out["dockyard shim template"] = {"rss_kib": rss, "pss_kib": pss}
        for pid in peers.pids_by_comm("dockyard-spare"):  # the template's shim forked ahead of a start
            if _env_of(pid).get("DOCKYARD_STATE") == self.dy.state:
                rss, pss = peers.rss_pss_kib(pid)
                out["dockyard spare shim"] = {"rss_kib": rss, "pss_kib": pss}
        for d in self.daemons:
            pid = d.pid or (peers.pids_by_exe(d.name)[:1] or [0])[0]
            rss, pss = peers.rss_pss_kib(pid)
            if rss:
                out[d.name] = {"rss_kib": rss, "pss_kib": pss}
        self.memory["idle services"] = out

    def case_pull(self) -> None:
        self.log(f"case: pull of a {self.big_mb} MiB+ image")
        assert self.dy is not None
        big = self.big
        case = f"pull {self.big_mb} MiB+ image"
        steps: dict[str, Callable[[int], list[tuple[str, Cmd]]]] = {
            "dockyard": lambda i: [("", self.dockyard("pull", big))]
        }
        env = self.dy.env

        def forget_ours() -> None:
            quiet(self.dockyard("rmi", big), env=env)
            quiet(self.dockyard("image", "gc"), env=env)
            _sync()

        prepare: dict[str, Callable[[], Any]] = {"dockyard": forget_ours}
        if self.have["ctr"]:
            steps["ctr"] = lambda i: [("", [peers.CTR, "images", "pull", "--plain-http", big])]
            prepare["ctr"] = lambda: (quiet([peers.CTR, "images", "rm", "--sync", big]), _sync())
        if self.have["docker"]:
            steps["docker"] = lambda i: [("", [peers.DOCKER, "pull", "-q", big])]
            prepare["docker"] = lambda: (quiet([peers.DOCKER, "rmi", "-f", big]), _sync())
        if self.have["podman"]:
            steps["podman"] = lambda i: [("", ["podman", "pull", "-q", "--tls-verify=false", big])]
            prepare["podman"] = lambda: (quiet(["podman", "rmi", "-f", big], env=self.podman_env), _sync())
        if self.have["skopeo"]:
            dest = self.work / "skopeo-pull"
            steps["skopeo copy (no unpack)"] = lambda i: [("", ["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                                                                f"docker://{big}", f"oci:{dest}:big"])]  # fmt: skip
            prepare["skopeo copy (no unpack)"] = lambda: (shutil.rmtree(dest, ignore_errors=True), _sync())
        warmup, self.warmup = self.warmup, 0
        try:
            self.alternate(case, steps, prepare=prepare, runs=self.pull_runs)
        finally:
            self.warmup = warmup
        quiet(self.dockyard("rmi", big), env=self.dy.env)
        quiet([peers.CTR, "images", "rm", "--sync", big])
        quiet([peers.DOCKER, "rmi", "-f", big])
        quiet(["podman", "rmi", "-f", big], env=self.podman_env)

    def _cleanup_containers(self, only: str | None = None) -> None:
        """Remove every ``dyb-*`` container of every tool (or of ``only``)."""
        if self.dy is not None and only in (None, "dockyard"):
            ids = quiet(self.dockyard("ps", "-aq", "--filter", "name=dyb-"), env=self.dy.env).stdout.split()
            if ids:
                quiet(self.dockyard("rm", "-f", *[i.decode() for i in ids]), env=self.dy.env)
        if self.have.get("ctr") and only in (None, "ctr"):
            names = [line.split()[0] for line in quiet([peers.CTR, "c", "ls", "-q"]).stdout.decode().splitlines()
                     if line.startswith("dyb-")]  # fmt: skip
            with ThreadPoolExecutor(max_workers=16) as pool:
                list(pool.map(lambda x: quiet(["sh", "-c", f"{peers.CTR} t rm -f {x}; {peers.CTR} c rm {x}"]), names))
        if self.have.get("docker") and only in (None, "docker"):
            ids = quiet([peers.DOCKER, "ps", "-aq", "--filter", "name=dyb-"]).stdout.split()
            if ids:
                quiet([peers.DOCKER, "rm", "-f", *[i.decode() for i in ids]])
        if self.have.get("podman") and only in (None, "podman"):
            ids = quiet(["podman", "ps", "-aq", "--filter", "name=dyb-"], env=self.podman_env).stdout.split()
            if ids:
                quiet(["podman", "rm", "-f", "-t", "0", *[i.decode() for i in ids]], env=self.podman_env)

    def run_all(self, cases: list[str]) -> None:
        """Run the named cases (``run``, ``run-d``, ``exec``, ``conc20``, ``conc100``, ``pull``, ``memory``)."""
        order = ["memory", "run", "run-d", "exec", "conc20", "conc100", "pull"]
        for name in order:
            if name not in cases:
                continue
            if name == "memory":
                self.case_idle_memory()
            elif name == "run":
                self.case_run_rm()
            elif name == "run-d":
                self.case_run_d_rm()
            elif name == "exec":
                self.case_exec()
            elif name == "conc20":
                self.case_concurrent(20, self.conc_iters)
            elif name == "conc100":
                self.case_concurrent(100, 1)
            elif name == "pull":
                self.case_pull()


def _sync() -> None:
    os.sync()


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return ""


def _env_of(pid: int) -> dict[str, str]:
    env: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            k, sep, v = item.partition(b"=")
            if sep:
                env[k.decode(errors="replace")] = v.decode(errors="replace")
    return env


__all__ = ["Suite", "timed"]

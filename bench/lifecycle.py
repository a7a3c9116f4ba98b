"""bench/lifecycle: how long a container's whole life takes, and what an idle shim costs.

In one run (issue 5, point 4), medians over ``--runs`` runs after ``--warmup`` runs:

- ``dockyard run --rm busybox true`` through the CLI (a private instance of the real
  services: events, image, snapshot, execution);
- the same through the execution service's API without the CLI process
  (create, wait, attach, start, output, removed), to separate the engine from the
  CLI's interpreter start-up;
- the floor: ``runc run`` of the same bundle (the ``config.json`` Dockyard generated for
  the container, the same busybox rootfs), and ``crun run`` of it;
- ``ctr run --rm`` (a private containerd, runc v2 shim) and ``podman run --rm
  --network none`` (private storage) where installed;

with ratios against the ``runc run`` floor; then the memory of one idle shim (RSS and
PSS of the shim of ``dockyard run -d busybox sleep``) against
``containerd-shim-runc-v2``. Everything started is stopped (by pid) and removed.

Usage: ``python -m bench.lifecycle [--runs 20] [--warmup 3] [--json FILE] [--no-peers]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.peers import pids_by_exe, rss_pss_kib
from deploy import mkimage
from tests.harness import Instance

IDLE_SHIMS = 5


def _timed(fn: Callable[[], None], runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _check(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(cmd, capture_output=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-400:]}")
    return proc


class Bench:
    def __init__(self, runs: int, warmup: int) -> None:
        self.runs = runs
        self.warmup = warmup
        self.results: dict[str, list[float]] = {}
        self.memory: dict[str, dict[str, int]] = {}
        self.notes: list[str] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="dybench-"))
        self.rootfs_tar = mkimage.busybox_rootfs_tar()
        self.image = mkimage.build_image("busybox:latest", [self.rootfs_tar])

    def _record_memory(self, name: str, pids: list[int]) -> None:
        rss, pss = rss_pss_kib(pids[0])
        self.memory[f"{name} (1st of {len(pids)} idle)"] = {"rss_kb": rss, "pss_kb": pss}
        samples = [rss_pss_kib(p) for p in pids]
        self.memory[f"{name} (mean of {len(pids)} idle)"] = {
            "rss_kb": sum(s[0] for s in samples) // len(samples),
            "pss_kb": sum(s[1] for s in samples) // len(samples),
        }

    def measure(self, name: str, fn: Callable[[], None], runs: int | None = None) -> None:
        sys.stderr.write(f"measuring {name} ...\n")
        try:
            self.results[name] = _timed(fn, runs or self.runs, self.warmup)
        except Exception as exc:  # a peer that fails here is reported, not fatal
            self.notes.append(f"{name}: {exc}")

    # -- dockyard ---------------------------------------------------------------------------------
    def dockyard(self, inst: Instance) -> None:
        archive = self.tmp / "busybox.docker.tar"
        mkimage.write_docker_archive([self.image], str(archive))
        inst.cli("load", "-i", str(archive), check=True)

        def cli_run() -> None:
            p = inst.cli("run", "--rm", "busybox", "true")
            if p.returncode != 0:
                raise RuntimeError(p.stderr.decode())

        self.measure("dockyard run --rm (CLI)", cli_run)

        def api_run() -> None:
            with (
                inst.client("execution", timeout_s=60) as c,
                inst.client("execution", timeout_s=None) as w,
                inst.client("execution", timeout_s=None) as a,
            ):
                cid = c.call("execution.create", {"image": "busybox", "cmd": ["true"], "auto_remove": True})["id"]
                wait = w.start("execution.wait", {"id": cid, "condition": "removed"})
                att = a.start("execution.attach", {"id": cid})
                att.next_frame()
                c.call("execution.start", {"id": cid})
                for _ in att:
                    pass
                wait.result()

        self.measure("dockyard run --rm (API, no CLI)", api_run)
        # the floor: runc run of the bundle Dockyard generated for the same container
        with inst.client("execution") as c:
            cid = c.call("execution.create", {"image": "busybox", "cmd": ["true"]})["id"]
            bundle = c.call("execution.inspect", {"id": cid})["bundle"]
            spec = json.loads(Path(bundle, "config.json").read_text())
            c.call("execution.remove", {"id": cid})
        self.floor_bundle = self.tmp / "bundle"
        (self.floor_bundle / "rootfs").mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(self.rootfs_tar)) as tar:
            tar.extractall(self.floor_bundle / "rootfs")
        for m in spec["mounts"]:  # /etc/hostname & co. came from the container dir, now gone
            if m["destination"] in ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf"):
                m["source"] = str(self.floor_bundle / "rootfs" / m["destination"].lstrip("/"))
                Path(m["source"]).touch()
        self.floor_spec = spec
        # idle shim memory: one shim, then the mean of IDLE_SHIMS (forked shims share pages)
        ids = [
            inst.cli("run", "-d", "busybox", "sleep", "600", check=True).stdout.decode().strip()
            for _ in range(IDLE_SHIMS)
        ]
        time.sleep(1.0)
        pids = []
        with inst.client("execution") as c:
            for cid in ids:
                bundle = c.call("execution.inspect", {"id": cid})["bundle"]
                pids.append(int(Path(bundle, "shim.pid").read_text()))
        self._record_memory("dockyard shim", pids)
        inst.cli("rm", "-f", *ids, check=True)

    def runtimes(self) -> None:
        for runtime in ("runc", "crun"):
            if not shutil.which(runtime):
                continue
            root = self.tmp / f"{runtime}-root"
            counter = [0]

            def run_once(runtime: str = runtime, root: Path = root, counter: list[int] = counter) -> None:
                counter[0] += 1
                cid = f"bench-{counter[0]}"
                spec = dict(self.floor_spec)
                spec["linux"] = {**spec["linux"], "cgroupsPath": f"/dockyard-bench/{cid}"}
                Path(self.floor_bundle, "config.json").write_text(json.dumps(spec))
                _check(
                    [runtime, "--root", str(root), "run", "--bundle", str(self.floor_bundle), cid],
                    stdin=subprocess.DEVNULL,
                )

            self.measure(f"{runtime} run (same bundle)", run_once)

    # -- peers ---------------------------------------------------------------------------------------
    def containerd(self) -> None:
        if not (shutil.which("containerd") and shutil.which("ctr")):
            self.notes.append("containerd/ctr not installed")
            return
        base = self.tmp / "containerd"
        sock = base / "c.sock"
        base.mkdir()
        cfg = base / "config.toml"
        cfg.write_text('version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n')
        log = open(base / "log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                "containerd",
                "--config",
                str(cfg),
                "--root",
                str(base / "root"),
                "--state",
                str(base / "state"),
                "--address",
                str(sock),
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        ctr = ["ctr", "--address", str(sock), "-n", "dybench"]
        try:
            for _ in range(100):
                if subprocess.run([*ctr, "version"], capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)
            archive = self.tmp / "busybox.oci.tar"
            mkimage.write_oci_layout([self.image], str(archive))
            _check([*ctr, "images", "import", str(archive)])
            ref = "docker.io/library/busybox:latest"
            counter = [0]

            def ctr_run() -> None:
                counter[0] += 1
                _check([*ctr, "run", "--rm", ref, f"b{counter[0]}", "true"], stdin=subprocess.DEVNULL)

            self.measure("ctr run --rm", ctr_run)
            names = [f"idle{i}" for i in range(IDLE_SHIMS)]
            for name in names:
                _check([*ctr, "run", "-d", ref, name, "sleep", "600"], stdin=subprocess.DEVNULL)
            time.sleep(1.0)
            shims = [p for p in pids_by_exe("containerd-shim-runc-v2") if _is_child_of_ns(p, "dybench")]
            if shims:
                self._record_memory("containerd-shim-runc-v2", shims)
            for name in names:
                subprocess.run([*ctr, "task", "kill", "-s", "KILL", name], capture_output=True)
            time.sleep(0.5)
            for name in names:
                subprocess.run([*ctr, "task", "rm", "-f", name], capture_output=True)
                subprocess.run([*ctr, "container", "rm", name], capture_output=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
            for point in _mounts_under(str(base)):
                subprocess.run(["umount", "-l", point], capture_output=True)

    def podman(self) -> None:
        if not shutil.which("podman"):
            self.notes.append("podman not installed")
            return
        base = self.tmp / "podman"
        base.mkdir()
        conf = base / "containers.conf"
        hard = subprocess.run(["sh", "-c", "ulimit -Hn"], capture_output=True, text=True).stdout.strip() or "1024"
        conf.write_text(
            f'[containers]\ndefault_ulimits = ["nofile={hard}:{hard}", "nproc=32768:32768"]\n'
            '[engine]\nevents_logger = "file"\ncgroup_manager = "cgroupfs"\n'
        )
        env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        pm = ["podman", "--root", str(base / "root"), "--runroot", str(base / "run"), "--tmpdir", str(base / "tmp")]
        try:
            archive = self.tmp / "busybox.docker.tar"
            _check([*pm, "load", "-q", "-i", str(archive)], env=env)

            def podman_run() -> None:
                _check(
                    [*pm, "run", "--rm", "--network", "none", "localhost/busybox:latest", "true"],
                    env=env,
                    stdin=subprocess.DEVNULL,
                )

            self.measure("podman run --rm --network none", podman_run)
        finally:
            subprocess.run([*pm, "rm", "-a", "-f"], env=env, capture_output=True)
            subprocess.run([*pm, "system", "reset", "-f"], env=env, capture_output=True)
            for point in _mounts_under(str(base)):
                subprocess.run(["umount", "-l", point], capture_output=True)

    # -- report -------------------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        floor = (
            statistics.median(self.results["runc run (same bundle)"]) if "runc run (same bundle)" in self.results else 0
        )
        rows = []
        for name, values in self.results.items():
            med = statistics.median(values)
            rows.append(
                {
                    "what": name,
                    "median_ms": round(med, 1),
                    "min_ms": round(min(values), 1),
                    "max_ms": round(max(values), 1),
                    "runs": len(values),
                    "x_floor": round(med / floor, 2) if floor else None,
                }
            )
        load = os.getloadavg()
        return {
            "runs": rows,
            "memory": self.memory,
            "notes": self.notes,
            "loadavg": [round(x, 2) for x in load],
            "cpus": os.cpu_count(),
            "kernel": os.uname().release,
        }

    def cleanup(self) -> None:
        for runtime in ("runc", "crun"):
            root = self.tmp / f"{runtime}-root"
            if root.is_dir():
                listing = subprocess.run([runtime, "--root", str(root), "list", "-q"], capture_output=True, text=True)
                for cid in listing.stdout.split():
                    subprocess.run([runtime, "--root", str(root), "delete", "-f", cid], capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _is_child_of_ns(pid: int, namespace: str) -> bool:
    with contextlib.suppress(OSError):
        return namespace.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    return False


def _mounts_under(path: str) -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4]
            if point.startswith(path):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def _print(report: dict[str, Any]) -> None:
    w = max(len(r["what"]) for r in report["runs"])
    print(f"{'what':<{w}}  {'median ms':>9}  {'min':>7}  {'max':>7}  {'x runc':>6}")
    for r in report["runs"]:
        ratio = f"{r['x_floor']:.2f}" if r["x_floor"] else "-"
        print(f"{r['what']:<{w}}  {r['median_ms']:>9.1f}  {r['min_ms']:>7.1f}  {r['max_ms']:>7.1f}  {ratio:>6}")
    print()
    for name, m in report["memory"].items():
        print(f"{name}: RSS {m['rss_kb'] / 1024:.1f} MiB, PSS {m['pss_kb'] / 1024:.1f} MiB")
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"load average during the run: {report['loadavg']} on {report['cpus']} CPUs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", help="also write the report as JSON to this file")
    parser.add_argument("--no-peers", action="store_true", help="skip containerd and podman")
    args = parser.parse_args()
    bench = Bench(args.runs, args.warmup)
    inst = Instance()
    try:
        inst.start("events", "image", "snapshot", "execution")
        bench.dockyard(inst)
        inst.cleanup()
        bench.runtimes()
        if not args.no_peers:
            bench.containerd()
            bench.podman()
        report = bench.report()
    finally:
        inst.cleanup()
        bench.cleanup()
    _print(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

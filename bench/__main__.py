"""``python -m bench`` (``make bench``): Dockyard against runc, crun, containerd, docker and podman.

Builds what it needs (the busybox image from ``deploy/mkimage.py`` pushed to a private
``docker-registry``, runc bundles of the same rootfs, a 100 MB+ image from
``bench/pull.py``), starts the peers' daemons that are installed but not running and a
private Dockyard instance (``bench/dockyard.py``), runs the cases of ``bench/suite.py``
with alternated runs, then stops everything it started and writes
``bench/results/latest.{md,json,png}``: medians and ratios against the bare runtime and
against each peer, the goals of issue 8, and box plots of the latency distributions.

Dockyard's sources are byte-compiled first (``compileall``): an installed package has
its ``.pyc`` files, and a process that compiles its modules at every start would measure
the compiler, not Dockyard.

Usage: ``python -m bench [--runs 20] [--cases run,run-d,exec,conc20,conc100,pull,memory] [--out DIR]
[--peer-state-tmpfs]``
(needs root; about 10 minutes with every peer). The other benches: ``bench.profile``
(where the start path spends its time), ``bench.events``, ``bench.pull``, ``bench.unpack``.
"""

from __future__ import annotations

import argparse
import compileall
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench import host, report
from bench.suite import Suite
from tests.harness import PROJECT

ALL_CASES = ["memory", "run", "run-d", "exec", "conc20", "conc100", "pull"]


def _versions() -> dict[str, str]:
    out = {}
    for name, cmd in {
        "runc": ["runc", "--version"],
        "crun": ["crun", "--version"],
        "containerd": ["containerd", "--version"],
        "docker": ["/usr/bin/docker", "--version"],
        "podman": ["podman", "--version"],
    }.items():
        try:
            text = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()
            out[name] = text[0] if text else ""
        except (OSError, subprocess.TimeoutExpired):
            continue
    return out


def gap_ms(value: str) -> float:
    """``--gap-ms``: a finite number of milliseconds, 0 or more. A negative or NaN gap passed
    the parser and failed ``time.sleep`` at the first timed command, after the set-up had
    started the peers' daemons (minutes in)."""
    try:
        ms = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not math.isfinite(ms) or ms < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of milliseconds, 0 or more: {value!r}")
    return ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="rounds of each latency case (default 20)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--pull-runs", type=int, default=3)
    parser.add_argument(
        "--conc-iters",
        type=int,
        default=8,
        help="rounds of the 20-at-once case (default 8: with 4 tools in rotated order, each starts"
        " each round's first, second, third and last equally often)",
    )
    parser.add_argument("--big-mb", type=int, default=140, help="size of the pulled image (MB, compressed)")
    parser.add_argument("--cases", default=",".join(ALL_CASES), help="comma-separated subset of " + ",".join(ALL_CASES))
    parser.add_argument("--out", default=str(PROJECT / "bench" / "results"))
    parser.add_argument("--work", default="/var/tmp/dockyard-bench", help="bundles, images, registry data, logs")
    parser.add_argument(
        "--gap-ms",
        type=gap_ms,
        default=100.0,
        help="quiet before each timed command (default 100; 0: back to back, each command then may ride on"
        " the previous one's kernel grace period)",
    )
    parser.add_argument(
        "--peer-state-tmpfs",
        action="store_true",
        help="put containerd's /run/containerd on a tmpfs too, as Dockyard puts its state directory"
        " when /run is a disk file system (default: as Debian's package sets it up)",
    )
    opts = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.stderr.write("error: the bench needs root (it runs containers)\n")
        return 1
    cases = [c.strip() for c in opts.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in ALL_CASES]
    if unknown:
        sys.stderr.write(f"error: unknown case(s) {', '.join(unknown)}; known: {', '.join(ALL_CASES)}\n")
        return 2
    for pkg in ("common", "cli", "services"):
        compileall.compile_dir(str(PROJECT / pkg), quiet=1)
    started = time.time()
    suite = Suite(Path(opts.work), runs=opts.runs, warmup=opts.warmup, big_mb=opts.big_mb,
                  pull_runs=opts.pull_runs, conc_iters=opts.conc_iters, peer_state_tmpfs=opts.peer_state_tmpfs,
                  gap_ms=opts.gap_ms,
                  log=lambda m: print(f"[{time.time() - started:6.1f}s] {m}", file=sys.stderr, flush=True))  # fmt: skip
    tuning = host.host_tuning()  # before anything runs: the probe wants a quiet host
    try:
        suite.setup()
        suite.run_all(cases)
    finally:
        suite.teardown()
    data = {
        "host": f"{platform.node()} {platform.release()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
        "kernel_tuning": tuning,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "versions": _versions(),
        "runs": opts.runs,
        "gap_ms": opts.gap_ms,
        "commands": suite.commands,
        "cases": {c: {t: s.as_dict() for t, s in tools.items()} for c, tools in suite.results.items()},
        "memory": suite.memory,
        "notes": suite.notes,
    }
    data["goals"] = report.goals(data)
    paths = report.write(data, Path(opts.out))
    print(report.markdown(data))
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

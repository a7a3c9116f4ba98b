"""bench/profile: where the time of ``dockyard run --rm busybox true`` goes, step by step.

Starts a private instance with ``DOCKYARD_TRACE`` set (``common.trace``): every
process of the instance (CLI, services, shim template, shims) appends
``<CLOCK_MONOTONIC ns> <pid> <process> <step>`` marks to one file, and this script adds
the two ends itself: ``spawn`` just before it starts the CLI and ``exit`` when the CLI
has exited. For each of ``--runs`` runs it puts the marks on one time line (ms since
``spawn``), then prints, per step in time order, the median time since ``spawn`` and
the median time since the step before it. Then the CPU time one run costs in each
process (the CLI from ``getrusage``, shims and the runtime they ran from their
``exiting`` mark, services from ``/proc/<pid>/stat`` over all runs): on a loaded
machine wall times stretch, CPU times much less.

Usage: ``python -m bench.profile [--runs 20] [--runtime runc|crun] [--json FILE] [--setup ARGS] [-- ARGS]``
(``ARGS`` default: ``run --rm busybox true``; for ``exec``: ``--setup 'run -d --name c busybox
sleep 600' -- exec c true``).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any

from bench import host
from bench.dockyard import PROJECT, PrivateDockyard
from deploy import mkimage


def _append(path: str, process: str, step: str, ns: int | None = None) -> None:
    with open(path, "a") as f:
        f.write(f"{ns if ns is not None else time.monotonic_ns()} {os.getpid()} {process} {step}\n")


def read_marks(path: str) -> list[tuple[int, int, str, str]]:
    """The marks of a trace file as ``(ns, pid, process, step)``, in time order."""
    marks = []
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split(" ", 3)
            if len(parts) == 4 and parts[0].isdigit():
                marks.append((int(parts[0]), int(parts[1]), parts[2], parts[3]))
    marks.sort()
    return marks


def split_runs(marks: list[tuple[int, int, str, str]]) -> list[list[tuple[float, str]]]:
    """Cut the marks into runs (``bench spawn`` .. ``bench exit``); times in ms since spawn.

    A step that repeats inside a run (e.g. ``recv execution.wait`` twice) gets a ``#2`` suffix.
    """
    runs: list[list[tuple[float, str]]] = []
    current: list[tuple[float, str]] | None = None
    t0 = 0
    seen: dict[str, int] = {}
    for ns, _pid, process, step in marks:
        step = step.split(" cpu=", 1)[0]
        label = f"{process}: {step}"
        if process == "bench" and step == "spawn":
            current, t0, seen = [], ns, {}
        if current is None:
            continue
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label} #{seen[label]}"
        current.append(((ns - t0) / 1e6, label))
        if process == "bench" and step == "exit":
            runs.append(current)
            current = None
    return runs


def _proc_cpu_ms(pid: int) -> tuple[float, float]:
    """CPU time of ``pid`` so far, ms: (user + system, system); zeros if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tick = 1000 / os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) * tick, int(fields[12]) * tick
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0


def cpu_per_run(marks: list[tuple[int, int, str, str]]) -> dict[str, tuple[float, float]]:
    """Median CPU ms per run of the shims and the runtime they ran, from the ``cpu=`` marks:
    ``{name: (user + system, system)}``."""
    shim, runtime = [], []
    for _ns, _pid, process, step in marks:
        if " cpu=" in step and process == "shim":
            fields = dict(part.split("=", 1) for part in step.split()[1:] if "=" in part)
            shim.append((float(fields["cpu"]), float(fields.get("sys", 0))))
            runtime.append((float(fields["children"]), float(fields.get("children_sys", 0))))
    out = {}
    if shim:
        out["shim"] = _medians(shim)
        out["runtime (children of the shim)"] = _medians(runtime)
    return out


def _medians(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def summarize(runs: list[list[tuple[float, str]]]) -> list[dict[str, Any]]:
    """Per step: median ms since spawn and since the previous step, and in how many runs it appeared."""
    at: dict[str, list[float]] = defaultdict(list)
    delta: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        prev = 0.0
        for t, label in run:
            at[label].append(t)
            delta[label].append(t - prev)
            prev = t
    rows = [
        {
            "step": label,
            "at_ms": statistics.median(values),
            "delta_ms": statistics.median(delta[label]),
            "runs": len(values),
        }
        for label, values in at.items()
    ]
    rows.sort(key=lambda r: r["at_ms"])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runtime", default="runc")
    parser.add_argument("--json", help="write the rows and the raw runs here")
    parser.add_argument(
        "--setup",
        default="",
        help="dockyard arguments run once first, e.g. 'run -d --name c busybox sleep 600' "
        "(then: -- exec c true); the private instance is removed with what it holds",
    )
    parser.add_argument("args", nargs="*", help="dockyard arguments (default: run --rm busybox true)")
    opts = parser.parse_args(argv)
    args = opts.args or ["run", "--rm", "busybox", "true"]
    for pkg in ("common", "cli", "services"):  # as an installed package would have them (see bench/__main__.py)
        compileall.compile_dir(str(PROJECT / pkg), quiet=1)
    tuning = host.host_tuning()
    trace_fd, trace_path = tempfile.mkstemp(prefix="dockyard-trace-", suffix=".txt")
    os.close(trace_fd)
    with PrivateDockyard(trace_path=trace_path, runtime=opts.runtime) as dy, tempfile.TemporaryDirectory() as tmp:
        archive = os.path.join(tmp, "busybox.tar")
        mkimage.write_docker_archive([mkimage.build_image("busybox:latest", [mkimage.busybox_rootfs_tar()])], archive)
        dy.up()
        dy.load_busybox(archive)
        if opts.setup:
            dy.run(*shlex.split(opts.setup))
        for _ in range(opts.warmup):
            dy.run(*args)
        open(trace_path, "w").close()
        services = dy.service_pids()
        before = {name: _proc_cpu_ms(pid) for name, pid in services.items()}
        cli_cpu: list[tuple[float, float]] = []
        for _ in range(opts.runs):
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            _append(trace_path, "bench", "spawn")
            proc = subprocess.run([*dy.cli, *args], env=dy.env, cwd=PROJECT, capture_output=True)
            _append(trace_path, "bench", "exit")
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cli_cpu.append(
                (
                    (after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime) * 1000,
                    (after.ru_stime - usage.ru_stime) * 1000,
                )
            )
            if proc.returncode != 0:
                sys.stderr.write(f"run failed ({proc.returncode}): {proc.stderr.decode()[-500:]}\n")
            time.sleep(0.2)  # let background work (event delivery) settle between runs
        cpu = {"cli": _medians(cli_cpu)}
        for name, pid in services.items():
            total, system = _proc_cpu_ms(pid)
            cpu[name] = ((total - before[name][0]) / max(1, opts.runs), (system - before[name][1]) / max(1, opts.runs))
    marks = read_marks(trace_path)
    cpu.update(cpu_per_run(marks))
    runs = split_runs(marks)
    rows = summarize(runs)
    total = statistics.median(run[-1][0] for run in runs) if runs else 0.0
    print(f"dockyard {' '.join(args)}: {len(runs)} runs, median {total:.1f} ms (runtime {opts.runtime})")
    print(f"kernel: {host.describe(tuning)}")
    print(f"{'at ms':>8} {'+ms':>7}  step")
    for r in rows:
        flag = "" if r["runs"] == len(runs) else f"  (in {r['runs']} runs)"
        print(f"{r['at_ms']:8.1f} {r['delta_ms']:7.1f}  {r['step']}{flag}")
    ranked = sorted(cpu.items(), key=lambda kv: -kv[1][0])
    print("CPU ms per run [of which system]: " + ", ".join(f"{k} {v[0]:.1f} [{v[1]:.1f}]" for k, v in ranked))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"args": args, "runtime": opts.runtime, "rows": rows, "cpu_ms": cpu, "runs": runs}, f, indent=1)
    os.unlink(trace_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Resources and observability (issue 5): --memory/--memory-swap/--cpus/--cpu-shares/--pids-limit
land in the container's cgroup (v1 here, v2 paths handled by services.shim.cgroups), ``update``
changes them live, ``stats``, ``top``, ``ps`` filters and Docker-like ``inspect``."""

from __future__ import annotations

import json
import time

import pytest

from services.shim import cgroups
from tests.engine import Engine

pytestmark = pytest.mark.root


def _read(cid: str, controller: str, v1: str, v2: str) -> str:
    path = cgroups.controller_dir(f"/dockyard/{cid}", controller)
    with open(f"{path}/{v2 if cgroups.is_v2() else v1}") as f:
        return f.read().strip()


def test_limits_land_in_the_cgroup_and_update_changes_them(engine: Engine) -> None:
    cid = (
        engine.run(
            "-d",
            "--name",
            "lim",
            "-m",
            "64m",
            "--memory-swap",
            "128m",
            "--cpus",
            "0.5",
            "--cpu-shares",
            "512",
            "--pids-limit",
            "40",
            "busybox",
            "sleep",
            "300",
            check=True,
        )
        .stdout.decode()
        .strip()
    )
    assert _read(cid, "memory", "memory.limit_in_bytes", "memory.max") == str(64 << 20)
    if not cgroups.is_v2():
        assert _read(cid, "memory", "memory.memsw.limit_in_bytes", "") == str(128 << 20)
        assert _read(cid, "cpu", "cpu.shares", "") == "512"
    assert _read(cid, "cpu", "cpu.cfs_quota_us", "cpu.max").split()[0] == "50000"
    assert _read(cid, "pids", "pids.max", "pids.max") == "40"
    p = engine.run(
        "--rm", "--pids-limit", "5", "busybox", "sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 2 & done; wait"
    )
    assert b"can't fork" in p.stderr or p.returncode != 0
    assert (
        engine.cli(
            "update", "-m", "96m", "--memory-swap", "192m", "--pids-limit", "60", "--cpus", "1", "lim"
        ).returncode
        == 0
    )
    assert _read(cid, "memory", "memory.limit_in_bytes", "memory.max") == str(96 << 20)
    assert _read(cid, "pids", "pids.max", "pids.max") == "60"
    assert _read(cid, "cpu", "cpu.cfs_quota_us", "cpu.max").split()[0] == "100000"
    res = engine.inspect("lim")["config"]["resources"]
    assert res["memory"] == 96 << 20 and res["pids_limit"] == 60
    engine.cli("restart", "-t", "0", "lim", check=True)  # kept for the next start
    assert _read(cid, "memory", "memory.limit_in_bytes", "memory.max") == str(96 << 20)
    engine.cli("rm", "-f", "lim", check=True)


def test_stats_no_stream_and_streaming(engine: Engine) -> None:
    engine.run("-d", "--name", "st", "-m", "64m", "busybox", "sh", "-c", "while true; do :; done", check=True)
    p = engine.cli("stats", "--no-stream", "st")
    lines = p.stdout.decode().splitlines()
    assert lines[0].split()[:4] == ["CONTAINER", "ID", "NAME", "CPU"]
    row = lines[1]
    assert "st" in row and "/ 64MiB" in row
    cpu = float(row.split()[2].rstrip("%"))
    assert cpu > 20  # a busy loop
    with engine.inst.client("execution", timeout_s=None) as c:
        samples = []
        for s in c.stream("execution.stats", {"id": "st", "stream": True}):
            samples.append(s)
            if len(samples) == 2:
                break
    assert samples[1]["pids"] >= 1 and samples[1]["memory_limit"] == 64 << 20
    engine.cli("rm", "-f", "st", check=True)


def test_top_lists_the_container_processes(engine: Engine) -> None:
    engine.run("-d", "--name", "tp", "busybox", "sh", "-c", "sleep 300 & sleep 301", check=True)
    time.sleep(0.3)
    p = engine.cli("top", "tp")
    lines = p.stdout.decode().splitlines()
    assert lines[0].split()[:2] == ["UID", "PID"]
    cmds = " ".join(lines[1:])
    assert "sleep 300" in cmds and "sleep 301" in cmds and len(lines) == 3  # sh execs the last command
    p = engine.cli("top", "tp", "-o", "pid,comm")
    assert p.stdout.decode().splitlines()[0].split() == ["PID", "COMMAND"]
    engine.cli("rm", "-f", "tp", check=True)


def test_ps_filters_and_inspect_state(engine: Engine) -> None:
    engine.run("-d", "--name", "up1", "-l", "role=web", "busybox", "sleep", "300", check=True)
    engine.run("--name", "ex3", "busybox", "sh", "-c", "exit 3")
    names = lambda *f: engine.cli("ps", "-a", "--format", "json", *[a for x in f for a in ("-f", x)]).stdout  # noqa: E731
    parsed = lambda out: sorted(json.loads(line)["Names"] for line in out.decode().splitlines())  # noqa: E731
    assert parsed(names("status=running")) == ["up1"]
    assert parsed(names("status=exited")) == ["ex3"]
    assert parsed(names("exited=3")) == ["ex3"]
    assert parsed(names("label=role=web")) == ["up1"]
    assert parsed(names("name=ex")) == ["ex3"]
    assert "ex3" not in engine.cli("ps").stdout.decode()
    doc = json.loads(engine.cli("inspect", "ex3").stdout)[0]
    st = doc["State"]
    assert (st["Status"], st["Running"], st["ExitCode"], st["OOMKilled"], st["Pid"]) == ("exited", False, 3, False, 0)
    assert st["StartedAt"] < st["FinishedAt"] and doc["Name"] == "/ex3" and doc["RestartCount"] == 0
    assert doc["Path"] == "sh" and doc["Args"] == ["-c", "exit 3"]
    running = json.loads(engine.cli("inspect", "up1").stdout)[0]["State"]
    assert running["Running"] and running["Pid"] > 0 and running["Status"] == "running"
    engine.cli("rm", "-f", "up1", "ex3", check=True)


def test_ps_refuses_a_filter_it_does_not_know(engine: Engine) -> None:
    """dockerd answers 400 for an unknown filter or status (``docker ps`` prints it); ``dockyard
    ps`` did not check them and listed every container, or none."""
    engine.run("-d", "--name", "pf", "busybox", "sleep", "300", check=True)
    for flt, message in (("bogus=1", "invalid filter 'bogus'"), ("status=bogus", "invalid filter 'status=bogus'")):
        p = engine.cli("ps", "-a", "-f", flt)
        assert p.returncode == 1 and p.stdout == b"", (flt, p)
        assert p.stderr.decode().strip() == f"error: {message}", p.stderr
    assert engine.cli("ps", "-q", "-f", "status=running").stdout.strip() != b""
    engine.cli("rm", "-f", "pf", check=True)

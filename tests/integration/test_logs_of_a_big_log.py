"""Regression: ``dockyard logs`` of a container that wrote tens of MB timed out (the whole
json-file log was read and framed on the execution service's event loop, which stopped
answering), and ``logs --tail 5`` read the whole file too. A container writes ~10 MB; ``logs
-f`` while it writes, ``logs`` afterwards and ``logs --tail 3`` give exactly its output, the
service keeps answering other calls while the log streams, and its memory stays flat."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import need_root
from tests.engine import Engine
from tests.harness import PROJECT, Instance

pytestmark = pytest.mark.root

LINES = 100_000
SCRIPT = (
    'awk \'BEGIN { s = sprintf("%93s", ""); gsub(/ /, "x", s);'
    f' for (i = 1; i <= {LINES}; i++) printf "%06d %s\\n", i, s }}\''
)


def _line(i: int) -> bytes:
    return b"%06d %s\n" % (i, b"x" * 93)


def _peak_rss_kib(pid: int) -> int:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmHWM:"):
            return int(row.split()[1])
    raise AssertionError("no VmHWM")


def test_logs_of_a_ten_mb_log_stream_tail_and_leave_the_service_responsive(instance: Instance) -> None:
    need_root()
    engine = Engine(instance)
    expected = b"".join(_line(i) for i in range(1, LINES + 1))
    cmd = [sys.executable, "-m", "cli"]

    engine.run("-d", "--name", "big", "busybox", "sh", "-c", SCRIPT, check=True)
    follow = subprocess.Popen(
        [*cmd, "logs", "-f", "big"], env=instance.env, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    followed, err = follow.communicate(timeout=60)
    assert follow.returncode == 0, err.decode()
    assert followed == expected  # followed while it wrote, ended when it exited
    path = engine.inspect("big")["log_path"]
    assert os.path.getsize(path) > 15_000_000

    pid = instance.pid("execution")
    rss_before = _peak_rss_kib(pid)
    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with instance.client("execution", timeout_s=30) as c:
            while not stop.is_set():
                t0 = time.monotonic()
                assert any(x["name"] == "big" for x in c.call("execution.list", {"all": True})["containers"])
                latencies.append(time.monotonic() - t0)
                time.sleep(0.02)

    prober = threading.Thread(target=probe)
    t0 = time.monotonic()
    reader = subprocess.Popen(
        [*cmd, "logs", "big"], env=instance.env, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    prober.start()
    try:
        out, err = reader.communicate(timeout=60)
    finally:
        stop.set()
        prober.join(timeout=30)
    took = time.monotonic() - t0
    assert reader.returncode == 0, err.decode()
    assert out == expected, f"{len(out)} bytes, {len(expected)} expected"
    assert took < 15, f"logs of a 10 MB output took {took:.1f} s"
    assert len(latencies) >= 3, "no call answered while the log streamed"
    assert max(latencies) < 1.0, f"execution.list took {max(latencies):.2f} s during logs"
    growth = _peak_rss_kib(pid) - rss_before
    assert growth < 32 * 1024, f"peak RSS of execution grew by {growth} KiB streaming the log"

    t0 = time.monotonic()
    tail = engine.cli("logs", "--tail", "3", "-t", "big", check=True).stdout.splitlines(keepends=True)
    assert time.monotonic() - t0 < 5
    assert [x.split(b" ", 1)[1] for x in tail] == [_line(LINES - 2), _line(LINES - 1), _line(LINES)]
    assert all(x.split(b" ", 1)[0].endswith(b"Z") for x in tail)
    assert engine.cli("logs", "--tail", "1", "-f", "big", check=True).stdout == _line(LINES)  # ended: no wait

    # a client that goes away mid-stream: the service cancels the read and closes the log
    with instance.client("execution", timeout_s=30) as c:
        call = c.start("execution.logs", {"id": "big"}, timeout_s=None)
        assert next(iter(call))["d"].startswith(_line(1))
        call.cancel()
        assert c.call("execution.inspect", {"id": "big"})["name"] == "big"
    engine.wait_until(lambda: not _open_files(pid, path), 10, "the log closed by the service")
    engine.cli("rm", "big", check=True)


def _open_files(pid: int, path: str) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(path):
            out.append(target)
    return out

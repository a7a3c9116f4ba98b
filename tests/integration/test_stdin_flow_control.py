"""Stdin is flow-controlled end to end (cli -> execution -> shim -> the process's pipe).

Regression for ``yes | dockyard run -i --rm busybox sh -c 'head -c 10'``: the CLI pushed
stdin as fast as ``yes`` made it, the execution service queued it all (~1 GB within seconds)
and the run ended with ``Unavailable``. Now each hop holds a bounded window and a process
that reads slowly (or stops reading) slows the producer down.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.engine import Engine
from tests.harness import PROJECT

pytestmark = pytest.mark.root

RSS_LIMIT_MB = 200


def rss_mb(pid: int) -> int:
    """VmRSS of ``pid`` in MiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


class PeakRss:
    """Samples the RSS of some processes every 50 ms in a thread; ``peak`` in MiB."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self.pids = pids
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids():
                self.peak = max(self.peak, rss_mb(pid))
            self._stop.wait(0.05)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def shim_pids(engine: Engine) -> list[int]:
    from tests.harness import pids_of_instance

    out = []
    for pid in pids_of_instance(engine.inst.state):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"services.shim" in cmd:
            out.append(pid)
    return out


def endless_stdin(engine: Engine, *args: str, timeout: float = 30) -> tuple[subprocess.CompletedProcess[bytes], float]:
    """``yes | dockyard <args>``: the CLI's result and how long it took."""
    yes = subprocess.Popen(["yes"], stdout=subprocess.PIPE)
    try:
        t0 = time.monotonic()
        p = subprocess.run(
            [sys.executable, "-m", "cli", *args],
            stdin=yes.stdout,
            capture_output=True,
            env=engine.inst.env,
            cwd=PROJECT,
            timeout=timeout,
        )
        return p, time.monotonic() - t0
    finally:
        yes.kill()
        yes.wait()
        assert yes.stdout is not None
        yes.stdout.close()


def test_endless_stdin_into_run_i_head_ends_promptly_with_bounded_memory(engine: Engine) -> None:
    execution = engine.inst.pid("execution")
    with PeakRss(lambda: [execution, *shim_pids(engine)]) as rss:
        # the second of sleep is what used to fill the execution service: nobody read stdin meanwhile
        p, elapsed = endless_stdin(engine, "run", "-i", "--rm", "busybox", "sh", "-c", "sleep 1; head -c 10")
    assert (p.returncode, p.stdout, p.stderr) == (0, b"y\ny\ny\ny\ny\n", b"")
    assert elapsed < 8, f"run took {elapsed:.1f} s"
    assert rss.peak < RSS_LIMIT_MB, f"execution/shim RSS reached {rss.peak} MiB"
    p, elapsed = endless_stdin(engine, "run", "-i", "--rm", "busybox", "head", "-c", "10")
    assert (p.returncode, p.stdout) == (0, b"y\ny\ny\ny\ny\n") and elapsed < 8, p.stderr
    assert rss_mb(execution) < RSS_LIMIT_MB


def test_endless_stdin_into_exec_i_head_ends_promptly_with_bounded_memory(engine: Engine) -> None:
    engine.run("-d", "--name", "fc-exec", "busybox", "sleep", "300", check=True)
    try:
        execution = engine.inst.pid("execution")
        with PeakRss(lambda: [execution, *shim_pids(engine)]) as rss:
            p, elapsed = endless_stdin(engine, "exec", "-i", "fc-exec", "sh", "-c", "sleep 1; head -c 10")
        assert (p.returncode, p.stdout, p.stderr) == (0, b"y\ny\ny\ny\ny\n", b"")
        assert elapsed < 8, f"exec took {elapsed:.1f} s"
        assert rss.peak < RSS_LIMIT_MB, f"execution/shim RSS reached {rss.peak} MiB"
        # the container goes on; a plain exec still works after the abandoned stdin
        assert engine.cli("exec", "fc-exec", "echo", "still-here").stdout == b"still-here\n"
    finally:
        engine.cli("rm", "-f", "fc-exec")


def test_slow_reader_throttles_the_writer_and_gets_every_byte(engine: Engine) -> None:
    """4 MiB into a container that reads nothing for a second, then 64 KiB at a time with
    pauses: the producer is held back (it cannot have written everything while nobody read),
    and the checksum of what the process read matches."""
    data = random.Random(7).randbytes(4 << 20)
    reader = (
        "sleep 1.5; while :; do dd bs=65536 count=1 2>/dev/null > /tmp/c; [ -s /tmp/c ] || break; "
        "cat /tmp/c; usleep 5000; done | md5sum"
    )
    cli = subprocess.Popen(
        [sys.executable, "-m", "cli", "run", "-i", "--rm", "busybox", "sh", "-c", reader],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=engine.inst.env,
        cwd=PROJECT,
    )
    written = 0
    at_one_s = -1
    t0 = time.monotonic()

    def feed() -> None:
        nonlocal written
        assert cli.stdin is not None
        try:
            for i in range(0, len(data), 16384):
                cli.stdin.write(data[i : i + 16384])
                cli.stdin.flush()
                written += 16384
            cli.stdin.close()
        except BrokenPipeError:
            pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        time.sleep(1.0)
        at_one_s = written
        feeder.join(60)
        assert cli.stdout is not None and cli.stderr is not None
        out, err = cli.stdout.read(), cli.stderr.read()  # a checksum, and nothing
        cli.wait(30)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        feeder.join(5)
    elapsed = time.monotonic() - t0
    assert cli.returncode == 0, err
    assert out.split()[0].decode() == hashlib.md5(data).hexdigest()
    # while the process read nothing, only the hops' windows filled up (pipes, 2 x 16 frames)
    assert at_one_s < len(data) - (512 << 10), f"{at_one_s} of {len(data)} bytes taken before anyone read"
    assert elapsed < 30


def test_stdin_after_the_process_closed_it_is_dropped_without_error(engine: Engine) -> None:
    """The process closes its stdin (EPIPE for the writer) and keeps running: the run ends
    with the process's output and exit code, not an error."""
    p, elapsed = endless_stdin(
        engine, "run", "-i", "--rm", "busybox", "sh", "-c", "head -c 4 >/dev/null; exec 0<&-; sleep 1; echo done"
    )
    assert (p.returncode, p.stdout, p.stderr) == (0, b"done\n", b""), p.stderr
    assert elapsed < 8
    assert os.path.exists(f"/proc/{engine.inst.pid('execution')}")

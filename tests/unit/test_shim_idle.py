"""The shim's idle monitor (idle.c): every wake reason, parking, reaping and exec retry, with real processes.

The monitor is compiled into tmp_path; PROGRAM is a small Python that writes a
marker file (written whole, then renamed) when the monitor has exec'd into it.
No root needed: no mounts, no namespaces.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.shim.idle import build
from services.shim.jsonlog import LogWriter

if shutil.which("cc") is None:
    pytest.skip("no C compiler (cc) to build the idle monitor", allow_module_level=True)

# PROGRAM prologue: argv[1] is the marker path; mark() writes it in one go
_PROLOGUE = (
    "import os, socket, sys\n"
    "def mark(text):\n"
    "    open(sys.argv[1] + '.tmp', 'w').write(text)\n"
    "    os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
)
WOKE = _PROLOGUE + "mark('woke')\n"
# argv[2]: the init's pid; the monitor must have left it unreaped
WAIT_INIT = _PROLOGUE + (
    "try:\n    mark(str(os.waitpid(int(sys.argv[2]), 0)[1]))\nexcept OSError as e:\n    mark(repr(e))\n"
)
# sh starts the background jobs, then execs into the monitor with the last job ($!) as the init
_SH_EXEC = 'exec "$0" --pid $! -- "$@" $!'


@pytest.fixture(scope="module")
def monitor(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("idle") / "dockyard-shim-idle")
    build(out)
    return out


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        for pid in [*_children(p.pid), p.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait(timeout=5)
        for f in (p.stdout, p.stderr):
            if f is not None:
                f.close()


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _children(pid: int) -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and _ppid(int(e)) == pid]


def _wait_for(cond: Callable[[], bool], timeout_s: float = 3.0, expect: bool = True) -> bool:
    deadline = time.monotonic() + timeout_s
    while cond() != expect:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _start(
    procs: list[subprocess.Popen[bytes]],
    monitor: str,
    opts: list[str],
    program: list[str],
    pass_fds: tuple[int, ...] = (),
) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(
        [monitor, *opts, "--", *program], pass_fds=pass_fds, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    procs.append(p)
    return p


def _start_sh(
    procs: list[subprocess.Popen[bytes]], monitor: str, jobs: str, code: str, marker: Path
) -> tuple[subprocess.Popen[bytes], list[int]]:
    """Run ``jobs`` in sh (they print their pids on one line), then exec into the monitor: the jobs are its children."""
    script = f"{jobs}; {_SH_EXEC}"
    p = subprocess.Popen(
        ["sh", "-c", script, monitor, sys.executable, "-S", "-c", code, str(marker)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    procs.append(p)
    assert p.stdout is not None
    assert select.select([p.stdout], [], [], 3)[0], "sh printed no pids"
    return p, [int(x) for x in p.stdout.readline().split()]


def _assert_asleep(p: subprocess.Popen[bytes], marker: Path, for_s: float = 0.2) -> None:
    time.sleep(for_s)
    assert p.poll() is None
    assert not marker.exists()


def _python(code: str, *args: object) -> list[str]:
    return [sys.executable, "-S", "-c", code, *map(str, args)]


def _unix_listener(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(128)
    return s


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--bogus", "--", "true"], "unknown option '--bogus'"),
        (["--watch", "0"], "missing '-- PROGRAM'"),
        (["--"], "missing PROGRAM"),
        (["--pid", "abc", "--", "true"], "--pid: not a valid number: 'abc'"),
        (["--watch", "250", "--", "true"], "--watch 250: fd is not open"),
    ],
)
def test_argument_errors_exit_2_with_one_line(monitor: str, args: list[str], says: str) -> None:
    proc = subprocess.run([monitor, *args], capture_output=True, timeout=5, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dockyard-shim-idle: ") and says in lines[0]
    assert proc.stdout == b""


def test_pending_connection_wakes_and_program_accepts_it(
    monitor: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    marker = tmp_path / "woke"
    listener = _unix_listener(tmp_path / "l.sock")
    fd = listener.fileno()
    code = _PROLOGUE + (
        "fd = int(sys.argv[2]); os.fstat(fd)\n"
        "conn, _ = socket.socket(fileno=fd).accept()\n"
        "conn.sendall(b'accepted'); conn.close(); mark('woke')\n"
    )
    p = _start(procs, monitor, ["--listen", str(fd)], _python(code, marker, fd), pass_fds=(fd,))
    _assert_asleep(p, marker)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(3)
        client.connect(str(tmp_path / "l.sock"))
        assert client.recv(16) == b"accepted"
    assert _wait_for(marker.exists)
    assert p.wait(timeout=3) == 0
    listener.close()


@pytest.mark.parametrize("event", ["byte", "hangup"])
def test_watch_fd_wakes(monitor: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path, event: str) -> None:
    marker = tmp_path / "woke"
    r, w = os.pipe()
    try:
        code = _PROLOGUE + "mark(os.read(int(sys.argv[2]), 1).decode() or 'eof')\n"
        p = _start(procs, monitor, ["--watch", str(r)], _python(code, marker, r), pass_fds=(r,))
        _assert_asleep(p, marker)
        if event == "byte":
            os.write(w, b"x")
        else:
            os.close(w)
            w = -1
        assert _wait_for(marker.exists)
        assert marker.read_text() == ("x" if event == "byte" else "eof")  # the watch fd passed through, unread
        assert p.wait(timeout=3) == 0
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_program_keeps_ignored_signals_and_gets_sigchld_unblocked(
    monitor: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    marker = tmp_path / "woke"
    r, w = os.pipe()
    try:
        code = _PROLOGUE + "mark(open('/proc/self/status').read())\n"
        p = _start(procs, monitor, ["--watch", str(r)], _python(code, marker), pass_fds=(r,))
        _assert_asleep(p, marker, 0.1)
        os.write(w, b"x")
        assert _wait_for(marker.exists)
        status = dict(line.split(":\t", 1) for line in marker.read_text().splitlines())
        blocked, ignored = int(status["SigBlk"], 16), int(status["SigIgn"], 16)
        assert not blocked & (1 << (signal.SIGCHLD - 1))
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGPIPE):
            assert ignored & (1 << (sig - 1)), sig
        assert not ignored & (1 << (signal.SIGCHLD - 1))
    finally:
        os.close(r)
        os.close(w)


def test_init_exit_wakes_and_is_left_for_the_program_to_reap(
    monitor: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    marker = tmp_path / "status"
    p, [_init] = _start_sh(procs, monitor, "sleep 0.3 & echo $!", WAIT_INIT, marker)
    assert _wait_for(marker.exists)
    status = int(marker.read_text())  # a ChildProcessError here would mean the monitor reaped the init
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert p.wait(timeout=3) == 0


def test_the_init_exit_time_is_handed_to_the_program(
    monitor: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    marker = tmp_path / "exited_at"
    before = time.time_ns()
    program = _PROLOGUE + "mark(os.environ.get('DOCKYARD_SHIM_EXITED_AT', 'unset'))\n"
    _start_sh(procs, monitor, "sleep 0.3 & echo $!", program, marker)
    assert _wait_for(marker.exists)
    exited_at = int(marker.read_text())  # ns since the epoch, when the monitor saw the exit
    assert before + 250_000_000 <= exited_at <= time.time_ns()
    other = tmp_path / "other"
    r, w = os.pipe()
    try:
        _start(procs, monitor, ["--watch", str(r)], _python(program, other), pass_fds=(r,))
        os.write(w, b"x")
        assert _wait_for(other.exists)
        assert other.read_text() == "unset"  # woken by output, no init gone: no time
    finally:
        os.close(r)
        os.close(w)


def test_init_already_exited_wakes_at_once_and_is_left_unreaped(
    monitor: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    marker = tmp_path / "status"
    # a launcher forks the init, lets it become a zombie, then execs into the monitor (sh would reap it)
    launcher = (
        "import os, sys, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n    os._exit(3)\n"
        "time.sleep(0.05)\n"
        "os.execv(sys.argv[1], [sys.argv[1], '--pid', str(pid), '--', *sys.argv[2:], str(pid)])\n"
    )
    p = subprocess.Popen(_python(launcher, monitor, *_python(WAIT_INIT, marker)), stdin=subprocess.DEVNULL)
    procs.append(p)
    assert _wait_for(marker.exists)
    status = int(marker.read_text())
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 3
    assert p.wait(timeout=3) == 0


def test_init_killed_by_a_signal_reaches_the_program(
    monitor: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    marker = tmp_path / "status"
    p, [init] = _start_sh(procs, monitor, "sleep 5 & echo $!", WAIT_INIT, marker)
    _assert_asleep(p, marker)
    os.kill(init, signal.SIGKILL)
    assert _wait_for(marker.exists)
    status = int(marker.read_text())
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_orphans_are_reaped_without_waking(monitor: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    marker = tmp_path / "status"
    grandchild_file = tmp_path / "grandchild"
    # `true` may exit before the monitor runs (its first sweep reaps it); `sleep 0.2` exits while it polls;
    # the subshell's `sleep 0.3` is re-parented to the monitor (it is a subreaper) when the subshell exits
    jobs = f"true & a=$!; sleep 0.2 & b=$!; (sleep 0.1; sleep 0.3 & echo $! > {grandchild_file}) & c=$!; "
    jobs += "sleep 5 & echo $a $b $c $!"
    p, [*orphans, init] = _start_sh(procs, monitor, jobs, WAIT_INIT, marker)
    assert _wait_for(grandchild_file.exists)
    assert _wait_for(lambda: grandchild_file.read_text().endswith("\n"))
    grandchild = int(grandchild_file.read_text())
    assert _wait_for(lambda: _ppid(grandchild) == p.pid)  # re-parented to the monitor, not to pid 1
    for pid in [*orphans, grandchild]:
        assert _wait_for(Path(f"/proc/{pid}").exists, expect=False), f"{pid} left a zombie"
    _assert_asleep(p, marker, 0.05)
    os.kill(init, signal.SIGKILL)
    assert _wait_for(marker.exists)
    assert os.WIFSIGNALED(int(marker.read_text()))


def test_park_clients_see_eof_when_the_monitor_wakes(
    monitor: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    marker = tmp_path / "woke"
    park = _unix_listener(tmp_path / "park.sock")
    r, w = os.pipe()
    clients = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
    try:
        opts = ["--park", str(park.fileno()), "--watch", str(r)]
        p = _start(procs, monitor, opts, _python(WOKE, marker), pass_fds=(park.fileno(), r))
        for c in clients:
            c.connect(str(tmp_path / "park.sock"))
        clients[2].close()  # a client leaving does not wake the monitor
        _assert_asleep(p, marker)
        for c in clients[:2]:
            c.setblocking(False)
            with pytest.raises(BlockingIOError):
                c.recv(1)
        os.write(w, b"x")
        for c in clients[:2]:
            c.settimeout(2)
            assert c.recv(1) == b""
        assert _wait_for(marker.exists)
    finally:
        for c in clients:
            c.close()
        park.close()
        os.close(r)
        os.close(w)


def test_a_byte_on_a_park_connection_wakes_the_monitor(
    monitor: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    marker = tmp_path / "woke"
    park = _unix_listener(tmp_path / "park.sock")
    waiter, waker = (socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2))
    try:
        p = _start(procs, monitor, ["--park", str(park.fileno())], _python(WOKE, marker), pass_fds=(park.fileno(),))
        waiter.connect(str(tmp_path / "park.sock"))
        _assert_asleep(p, marker)
        waker.connect(str(tmp_path / "park.sock"))
        waker.sendall(b"w")
        for c in (waker, waiter):
            c.settimeout(2)
            assert c.recv(1) == b""
        assert _wait_for(marker.exists)
    finally:
        for c in (waiter, waker):
            c.close()
        park.close()


def test_park_keeps_at_most_64_clients(monitor: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    marker = tmp_path / "woke"
    park = _unix_listener(tmp_path / "park.sock")
    clients = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(66)]
    try:
        p = _start(procs, monitor, ["--park", str(park.fileno())], _python(WOKE, marker), pass_fds=(park.fileno(),))
        for c in clients:
            c.connect(str(tmp_path / "park.sock"))
        for c in clients[64:]:
            c.settimeout(2)
            assert c.recv(1) == b""
        for c in clients[:64]:
            c.setblocking(False)
            with pytest.raises(BlockingIOError):
                c.recv(1)
        assert p.poll() is None and not marker.exists()
    finally:
        for c in clients:
            c.close()
        park.close()


def test_waiting_monitor_is_named_dockyard_shim_and_ignores_stop_signals(
    monitor: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    marker = tmp_path / "woke"
    r, w = os.pipe()
    try:
        p = _start(procs, monitor, ["--watch", str(r)], _python(WOKE, marker), pass_fds=(r,))
        comm = Path(f"/proc/{p.pid}/comm")
        assert _wait_for(lambda: comm.read_text() == "dockyard-shim\n")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGPIPE):
            p.send_signal(sig)
        _assert_asleep(p, marker, 0.1)
        assert comm.read_text() == "dockyard-shim\n"
    finally:
        os.close(r)
        os.close(w)


def test_failed_exec_is_reported_and_retried_without_exiting(
    monitor: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    r, w = os.pipe()
    try:
        missing = str(tmp_path / "no-such-shim")
        p = _start(procs, monitor, ["--watch", str(r)], [missing], pass_fds=(r,))
        os.write(w, b"x")
        assert p.stderr is not None
        assert select.select([p.stderr], [], [], 3)[0]
        assert p.stderr.readline() == f"dockyard-shim-idle: exec {missing}: No such file or directory\n".encode()
        time.sleep(1.2)
        assert p.poll() is None
    finally:
        os.close(r)
        os.close(w)


# -- the log it writes while the shim sleeps: byte for byte what jsonlog.LogWriter writes ---------------------

SAMPLES: list[tuple[int, bytes]] = [
    (1, b"plain line\n"),
    (2, b'quotes " and \\ backslashes, \t tabs, \r returns, \x08\x0c\x01\x1f\x7f controls\n'),
    (1, "accents é, 中文, emoji 🚢 and U+2028 \u2028\n".encode()),
    (1, b"two\nlines\n" + b"x" * 16383 + b"\n"),
    (2, b"y" * 16384 + b"\n" + b"z" * 16385 + b"\n"),
    (1, b"w" * 40000 + b"\nand an unterminated tail"),
]


def _entries(path: Path) -> list[tuple[str, str]]:
    out = []
    for line in path.read_bytes().splitlines():
        entry = json.loads(line)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", entry["time"]), entry["time"]
        assert list(entry) == ["log", "stream", "time"]
        out.append((entry["stream"], entry["log"]))
    return out


def _log_monitor(
    procs: list[subprocess.Popen[bytes]], monitor: str, tmp_path: Path, max_size: int = 0
) -> tuple[subprocess.Popen[bytes], dict[int, int], Path, Path]:
    """A monitor logging two pipes (stdout, stderr) to tmp_path/log; (process, write ends, log, marker)."""
    marker = tmp_path / "woke"
    ends, opts, keep = {}, [], []
    for stream in (1, 2):
        r, w = os.pipe()
        ends[stream] = w
        keep.append(r)
        opts += ["--out", f"{r}:{stream}"]
    log = tmp_path / "log"
    opts += ["--log", str(log), "--log-max-size", str(max_size), "--partial", str(tmp_path / "partial")]
    p = _start(procs, monitor, opts, _python(WOKE, marker), pass_fds=tuple(keep))
    for r in keep:
        os.close(r)
    return p, ends, log, marker


def test_output_is_logged_as_the_shim_logs_it_without_waking(
    monitor: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    (tmp_path / "partial.1").write_bytes(b"held by the shim: ")  # its unterminated line, handed over
    p, ends, log, marker = _log_monitor(procs, monitor, tmp_path)
    ref_path = str(tmp_path / "reference")
    reference = LogWriter(ref_path)
    reference.write(1, b"held by the shim: ")
    for stream, data in SAMPLES:
        os.write(ends[stream], data)
        reference.write(stream, data)
        time.sleep(0.02)
    _assert_asleep(p, marker)
    assert _wait_for(lambda: len(_entries(log)) == len(_entries(Path(ref_path))))
    assert _entries(log) == _entries(Path(ref_path))
    os.close(ends[2])  # the end of a stream wakes it, with the unterminated line handed back
    assert _wait_for(marker.exists)
    os.close(ends[1])
    assert (tmp_path / "partial.1").read_bytes() == b"and an unterminated tail" == reference.partial()[1]
    assert not (tmp_path / "partial.2").exists()


@pytest.mark.parametrize(
    ("max_size", "data"),
    [(0, b"ok\nnot utf-8: \xff\xfe\n"), (64, b"a line that takes the log past its max-size of 64 bytes\n")],
)
def test_output_it_cannot_log_as_the_shim_would_wakes_it_unwritten(
    monitor: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path, max_size: int, data: bytes
) -> None:
    _, ends, log, marker = _log_monitor(procs, monitor, tmp_path, max_size)
    try:
        os.write(ends[1], data)
        assert _wait_for(marker.exists)
        assert log.read_bytes() == b""  # nothing of that read is written: the shim writes it all
        assert (tmp_path / "partial.1").read_bytes() == data
    finally:
        for w in ends.values():
            os.close(w)

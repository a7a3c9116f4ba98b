"""I/O (issue 5; CASES.md C22, C23): json-file logs with rotation and the logs options, output
kept byte for byte, stdin EOF reaching the container (run -i, attach, exec -i), TTYs (raw
stream, resize, detach keys), and exec."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest

from tests.engine import Engine
from tests.harness import PROJECT
from tests.ptyutil import PtyProcess

pytestmark = pytest.mark.root


def test_one_mib_line_binary_and_no_final_newline_survive_logs(engine: Engine) -> None:
    engine.run("--name", "big", "busybox", "sh", "-c", "head -c 1048576 /dev/zero | tr '\\0' a; echo", check=True)
    assert engine.cli("logs", "big").stdout == b"a" * 1048576 + b"\n"
    engine.run(
        "--name", "bin", "busybox", "sh", "-c", "printf 'x\\000y\\377\\200z'; printf 'e' >&2; printf 'tail'", check=True
    )
    p = engine.cli("logs", "bin")
    assert p.stdout == b"x\x00y\xff\x80ztail" and p.stderr == b"e"
    engine.cli("rm", "big", "bin", check=True)


def test_log_rotation_keeps_max_files(engine: Engine) -> None:
    engine.run(
        "--name",
        "rot",
        "--log-opt",
        "max-size=10k",
        "--log-opt",
        "max-file=3",
        "busybox",
        "sh",
        "-c",
        "i=0; while [ $i -lt 2000 ]; do echo line-$i; i=$((i+1)); done",
        check=True,
    )
    info = engine.inspect("rot")
    path = info["log_path"]
    files = sorted(f for f in os.listdir(os.path.dirname(path)) if f.startswith(os.path.basename(path)))
    assert len(files) == 3 and all(os.path.getsize(os.path.join(os.path.dirname(path), f)) < 12 * 1024 for f in files)
    out = engine.cli("logs", "rot").stdout.decode().splitlines()
    assert out[-1] == "line-1999" and "line-0" not in out
    assert [int(x.split("-")[1]) for x in out] == list(range(2000 - len(out), 2000))  # contiguous tail
    engine.cli("rm", "rot", check=True)


def test_logs_tail_since_timestamps_and_follow(engine: Engine) -> None:
    engine.run(
        "-d", "--name", "lg", "busybox", "sh", "-c", "for i in 1 2 3 4 5; do echo $i; sleep 0.3; done", check=True
    )
    t0 = time.monotonic()
    p = engine.cli("logs", "-f", "lg")
    assert p.stdout == b"1\n2\n3\n4\n5\n" and time.monotonic() - t0 > 0.5  # followed until the exit
    assert engine.cli("logs", "--tail", "2", "lg").stdout == b"4\n5\n"
    assert engine.cli("logs", "-n", "0", "lg").stdout == b""
    lines = engine.cli("logs", "-t", "lg").stdout.decode().splitlines()
    assert len(lines) == 5 and lines[0].endswith("Z 1") and lines[0][:4].isdigit()
    assert engine.cli("logs", "--since", "1h", "lg").stdout == b"1\n2\n3\n4\n5\n"
    stamp = lines[2].split(" ")[0]
    assert engine.cli("logs", "--since", stamp, "lg").stdout == b"3\n4\n5\n"
    assert engine.cli("logs", "--until", stamp, "lg").stdout == b"1\n2\n3\n"
    with open(engine.inspect("lg")["log_path"]) as f:
        json_lines = [json.loads(x) for x in f]
    assert json_lines[0] == {"log": "1\n", "stream": "stdout", "time": lines[0].split(" ")[0]}
    engine.cli("rm", "lg", check=True)


def test_run_i_delivers_64_mib_and_eof(engine: Engine) -> None:
    data = os.urandom(64 << 20)
    t0 = time.monotonic()
    p = engine.run("--rm", "-i", "busybox", "wc", "-c", input=data)
    assert p.returncode == 0 and p.stdout.strip() == b"67108864"
    assert time.monotonic() - t0 < 60
    p = engine.run("--rm", "-i", "busybox", "true", input=b"")
    assert p.returncode == 0


def test_attach_with_stdin_eof_reaches_cat(engine: Engine) -> None:
    cid = engine.cli("create", "-i", "busybox", "cat", check=True).stdout.decode().strip()
    p = engine.cli("start", "-a", "-i", cid, input=b"abc")
    assert p.returncode == 0 and p.stdout == b"abc"
    assert engine.inspect(cid)["state"]["exit_code"] == 0
    engine.cli("rm", cid, check=True)


def test_tty_output_is_raw_with_crlf(engine: Engine) -> None:
    p = engine.run("--name", "tty", "-t", "busybox", "printf", "Hello this is a bug\\n")
    assert p.stdout == b"Hello this is a bug\r\n"
    assert engine.cli("logs", "tty").stdout == b"Hello this is a bug\r\n"
    engine.cli("rm", "tty", check=True)


def test_run_it_keeps_input_typed_before_the_container_is_attached(engine: Engine) -> None:
    """``dockyard run -it`` under a terminal: what was typed ahead (``echo cmd | script -c ...``)
    reaches the shell; switching the terminal to raw mode must not flush it."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI with the pty as its terminal
        os.chdir(PROJECT)
        os.execve(sys.executable, [sys.executable, "-m", "cli", "run", "--rm", "-it", "busybox", "sh"], engine.inst.env)
    os.write(fd, b"echo typed-$((6*7))\rexit 3\r")  # before the CLI even started
    out = b""
    deadline = time.monotonic() + 30
    status = None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                out += os.read(fd, 4096)
            except OSError:
                pass
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            break
    if status is None:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    os.close(fd)
    assert status is not None, out
    assert b"typed-42" in out and os.waitstatus_to_exitcode(status) == 3, out


def test_tty_size_and_resize(engine: Engine) -> None:
    with engine.inst.client("execution") as c:
        cid = c.call(
            "execution.create",
            {
                "image": "busybox",
                "tty": True,
                "console_size": [30, 90],
                "cmd": ["sh", "-c", "stty size; sleep 1; stty size"],
            },
        )["id"]
        c.call("execution.start", {"id": cid})
        time.sleep(0.4)
        c.call("execution.resize", {"id": cid, "height": 40, "width": 100})
        assert c.call("execution.wait", {"id": cid}, timeout_s=30)["exit_code"] == 0
    assert engine.cli("logs", cid).stdout == b"30 90\r\n40 100\r\n"
    engine.cli("rm", cid, check=True)


def test_detach_keys_leave_the_container_running(engine: Engine) -> None:
    cid = engine.run("-d", "-i", "-t", "busybox", "sh", check=True).stdout.decode().strip()
    with engine.inst.client("execution", timeout_s=None) as c:
        call = c.start("execution.attach", {"id": cid, "stdin": True})
        assert call.next_frame()[1]["attached"] is True
        call.send(b"echo marker-$((40+2))\n")
        seen = b""
        while b"marker-42" not in seen:
            seen += call.next_frame()[1].get("d", b"")
        call.send(b"\x10\x11")
        frames = list(call)
    assert frames[-1] == {"detached": True}
    assert engine.inspect(cid)["state"]["running"]
    engine.cli("rm", "-f", cid, check=True)


def test_detach_keys_on_a_tty_keep_stdin_open_for_the_next_attach(engine: Engine) -> None:
    """``run -it`` (StdinOnce) detached with ctrl-p ctrl-q: the shell keeps running with its
    terminal open (Docker closes stdin at the end of an attach only without a TTY), and
    ``attach`` and ``start -ai`` reach it again and detach again."""
    cli = [sys.executable, "-m", "cli"]

    def detach(session: PtyProcess) -> None:
        session.write(b"\x10\x11")
        assert session.wait() == 0, session.out
        time.sleep(0.5)  # a stdin closed at the detach would end the shell by now
        info = engine.inspect("dt")
        assert info["state"]["running"] and info["config"]["stdin_once"], info["state"]

    def typed(session: PtyProcess, n: int) -> None:
        session.write(f"echo typed-$((40+{n}))\r".encode())
        session.read_until(f"typed-{40 + n}\r\n".encode())

    for n, argv in enumerate(
        (["run", "-it", "--name", "dt", "busybox", "sh"], ["attach", "dt"], ["attach", "dt"], ["start", "-ai", "dt"])
    ):
        if argv[0] == "start":
            engine.cli("stop", "-t", "0", "dt", check=True)
        session = PtyProcess([*cli, *argv], engine.inst.env, cwd=str(PROJECT))
        try:
            if argv[0] != "attach":
                session.read_until(b"# ")
            typed(session, n)
            detach(session)
        finally:
            session.close()
    engine.cli("rm", "-f", "dt", check=True)


def test_exec_exit_codes_stdin_tty_and_events(engine: Engine) -> None:
    cid = engine.run("-d", "--name", "ex", "busybox", "sleep", "300", check=True).stdout.decode().strip()
    assert engine.cli("exec", "ex", "sh", "-c", "exit 5").returncode == 5
    assert engine.cli("exec", "ex", "nosuchcmd").returncode == 126  # dockerd: every exec start failure
    p = engine.cli("exec", "-i", "ex", "cat", input=b"hello\n")
    assert (p.returncode, p.stdout) == (0, b"hello\n")
    p = engine.cli("exec", "-u", "1000", "-w", "/tmp", "-e", "V=x=y", "ex", "sh", "-c", "id -u; pwd; echo $V")
    assert p.stdout == b"1000\n/tmp\nx=y\n"
    assert engine.cli("exec", "-t", "ex", "printf", "a\\n").stdout == b"a\r\n"
    assert engine.cli("exec", "-d", "ex", "sh", "-c", "echo bg > /tmp/bg").returncode == 0
    engine.wait_until(lambda: engine.cli("exec", "ex", "cat", "/tmp/bg").stdout == b"bg\n")
    assert engine.inspect("ex")["exec_ids"]
    engine.wait_until(lambda: "/tasks/exec-started" in engine.topics(cid))
    evs = [e for e in engine.events(cid) if e["topic"].startswith("/tasks/exec") or e["event"].get("id", cid) != cid]
    first = evs[0]["event"]["exec_id"]
    mine = [e["topic"] for e in evs if first in (e["event"].get("exec_id"), e["event"].get("id"))]
    assert mine == ["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit", "/tasks/delete"]
    exit_ev = next(e for e in evs if e["topic"] == "/tasks/exit" and e["event"]["id"] == first)
    assert exit_ev["event"]["exit_status"] == 5
    p = engine.cli("exec", "nosuch", "true")
    assert p.returncode == 1 and b"not found" in p.stderr  # docker exec's code for no such container
    engine.cli("stop", "-t", "0", "ex", check=True)
    p = engine.cli("exec", "ex", "true")
    assert p.returncode != 0 and b"not running" in p.stderr
    engine.cli("rm", "ex", check=True)


def test_stdin_closes_when_the_attached_client_is_killed(engine: Engine) -> None:
    """``run -i`` and ``exec -i`` whose CLI is SIGKILLed before it sent EOF: the process's stdin
    is closed as at EOF (Docker's StdinOnce), so a ``cat`` reading it ends instead of waiting."""
    engine.run("-d", "--name", "exi", "busybox", "sleep", "300", check=True)

    def killed_cli(*args: str) -> None:
        cli = subprocess.Popen(
            [sys.executable, "-m", "cli", *args], env=engine.inst.env, cwd=PROJECT, stdin=subprocess.PIPE
        )
        try:
            assert cli.stdin is not None
            cli.stdin.write(b"typed\n")
            cli.stdin.flush()
            time.sleep(1.5)  # attached, and the line went through; stdin stays open
            cli.kill()
        finally:
            cli.wait()
            assert cli.stdin is not None
            cli.stdin.close()

    killed_cli("run", "-i", "--name", "ri", "busybox", "sh", "-c", "cat; echo got-eof")
    engine.wait_until(lambda: not engine.inspect("ri")["state"]["running"], 20, "run -i's cat to see EOF")
    assert engine.cli("logs", "ri").stdout == b"typed\ngot-eof\n"
    killed_cli("exec", "-i", "exi", "sh", "-c", "cat > /tmp/in; echo got-eof >> /tmp/in")
    engine.wait_until(lambda: engine.cli("exec", "exi", "cat", "/tmp/in").stdout == b"typed\ngot-eof\n", 20, "EOF")
    engine.cli("rm", "-f", "ri", "exi", check=True)

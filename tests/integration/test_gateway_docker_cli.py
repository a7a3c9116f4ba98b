"""The real docker CLI against Dockyard's socket (issue 7, "what it must show" 1).

One instance started with ``dockyard up`` serves the module: services are separate
processes under the supervisor, containers run under real runc on overlayfs, the image is
a real busybox; pulls and pushes go to Debian's ``docker-registry`` on 127.0.0.1.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pty
import select
import signal
import struct
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.conftest import need_root
from tests.gateway_util import Engine, engine
from tests.harness import pids_of_instance
from tests.ptyutil import PtyProcess
from tests.registry import Registry


@pytest.fixture(scope="module")
def eng() -> Iterator[Engine]:
    need_root()
    with engine() as e:
        if e.cli is None:
            pytest.skip("no docker CLI installed")
        yield e


def _wait(predicate, timeout_s: float = 15.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_run_prints_output_and_exits_with_the_container_code(eng: Engine) -> None:
    r = eng.docker("run", "--rm", "busybox", "echo", "hi")
    assert (r.returncode, r.stdout) == (0, b"hi\n"), r.stderr
    r = eng.docker("run", "--rm", "busybox", "sh", "-c", "echo oops >&2; exit 7")
    assert r.returncode == 7 and r.stderr == b"oops\n"
    r = eng.docker("run", "--rm", "busybox", "no-such-binary")
    assert r.returncode == 127, r.stderr
    assert eng.leftovers() == []  # --rm removed every one of them


def test_run_i_passes_stdin_and_its_eof(eng: Engine) -> None:
    """Case C22: EOF of the client's stdin closes the container's stdin (cat and wc end)."""
    r = eng.docker("run", "--rm", "-i", "busybox", "cat", input=b"abc")
    assert (r.returncode, r.stdout) == (0, b"abc"), r.stderr
    payload = os.urandom(8 << 20)
    r = eng.docker("run", "--rm", "-i", "busybox", "wc", "-c", input=payload, timeout=120)
    assert (r.returncode, r.stdout.strip()) == (0, str(len(payload)).encode()), r.stderr
    r = eng.docker("run", "--rm", "-i", "busybox", "true", input=b"")
    assert r.returncode == 0
    assert eng.leftovers() == []


def _service_pids(eng: Engine, *names: str) -> list[int]:
    out = []
    for pid in pids_of_instance(eng.inst.state):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if any(f"services.{name}".encode() in cmd for name in names):
            out.append(pid)
    return out


def _rss_mb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS:")), 0)
    except OSError:
        return 0


def test_endless_stdin_into_run_i_head_exits_0_without_connection_reset(eng: Engine) -> None:
    """Regression: ``yes | docker run -i --rm busybox head -n 3`` exited 1 with "connection reset
    by peer": the gateway closed the hijacked socket with unread stdin in its receive buffer (the
    kernel then resets the connection). It now half-closes and drains, as dockerd; and it reads
    the socket only as fast as the container takes stdin, so no service buffers ``yes``."""
    pids = _service_pids(eng, "gateway", "execution")
    assert len(pids) == 2
    peak = 0
    for cmd, expected in ((["head", "-n", "3"], b"y\ny\ny\n"), (["sh", "-c", "sleep 1; head -c 4"], b"y\ny\n")):
        for _ in range(2):  # the reset was a race the client lost most of the time: try twice
            yes = subprocess.Popen(["yes"], stdout=subprocess.PIPE)
            try:
                t0 = time.monotonic()
                assert eng.cli is not None
                r = subprocess.run(
                    [eng.cli, "run", "-i", "--rm", "busybox", *cmd],
                    stdin=yes.stdout,
                    capture_output=True,
                    env=eng.env,
                    timeout=30,
                    cwd="/",
                )
                elapsed = time.monotonic() - t0
            finally:
                yes.kill()
                yes.wait()
                assert yes.stdout is not None
                yes.stdout.close()
            assert (r.returncode, r.stdout, r.stderr) == (0, expected, b""), cmd
            assert elapsed < 10
            peak = max([peak, *(_rss_mb(pid) for pid in pids)])
    assert peak < 200, f"gateway/execution RSS reached {peak} MiB"
    _wait(lambda: eng.leftovers() == [], 10, "the --rm containers to be removed")


def test_detached_container_ps_logs_exec_inspect_stop_rm(eng: Engine) -> None:
    cid = eng.ok("run", "-d", "--name", "web", "-l", "app=gw", "busybox", "sh", "-c", "trap 'exit 0' TERM; "
                 "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done").strip()  # fmt: skip
    assert len(cid) == 64
    ps = eng.ok("ps", "--format", "{{.ID}} {{.Names}} {{.Status}} {{.Labels}}")
    assert f"{cid[:12]} web Up" in ps and "app=gw" in ps
    assert eng.ok("ps", "-q", "--filter", "label=app=gw").split() == [cid[:12]]
    assert eng.ok("ps", "-q", "--filter", "label=app=other").split() == []

    follow = subprocess.Popen(
        [eng.cli or "docker", "logs", "-f", "web"], env=eng.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert follow.stdout is not None
        first = follow.stdout.readline()
        second = follow.stdout.readline()
        assert first.startswith(b"line ") and second.startswith(b"line ")

        assert eng.ok("exec", "web", "echo", "from-exec") == "from-exec\n"
        assert eng.docker("exec", "web", "sh", "-c", "exit 3").returncode == 3
        assert eng.ok("exec", "-i", "web", "cat", input=b"hello\n") == "hello\n"

        info = json.loads(eng.ok("inspect", "web"))[0]
        assert info["Id"] == cid and info["Name"] == "/web" and info["State"]["Running"] is True
        assert info["Config"]["Labels"]["app"] == "gw" and info["HostConfig"]["LogConfig"]["Type"] == "json-file"
        assert eng.ok("inspect", "-f", "{{.State.Status}}", cid[:8]).strip() == "running"

        started = time.monotonic()
        assert eng.ok("stop", "web").strip() == "web"
        assert time.monotonic() - started < 8  # the trap made it exit on SIGTERM
        follow.wait(timeout=15)  # the follow ends with the container
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert eng.docker("stop", "web").returncode == 0  # a 304: already stopped is success
    assert json.loads(eng.ok("inspect", "web"))[0]["State"]["ExitCode"] == 0
    assert eng.ok("logs", "--tail", "1", "web").startswith("line ")
    assert eng.ok("rm", "-f", "web").strip() == "web"
    r = eng.docker("container", "inspect", "web")
    assert r.returncode != 0 and b"No such container: web" in r.stderr


def _pty_session(eng: Engine, args: list[str], command: bytes, expect: bytes) -> int:
    """Run ``docker <args>`` with a pty as its terminal: wait for the prompt, type ``command``,
    read ``expect``, type ``exit 5``; return docker's exit code."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: docker with the pty as its terminal
        os.environ.update(eng.env)
        os.execv(eng.cli or "docker", ["docker", *args])
    out = b""

    def read_until(marker: bytes, timeout_s: float = 15) -> None:
        nonlocal out
        deadline = time.monotonic() + timeout_s
        while marker not in out and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    out += os.read(fd, 4096)
                except OSError:
                    return
        assert marker in out, out

    try:
        read_until(b"# ")
        os.write(fd, command + b"\r")
        read_until(expect)
        os.write(fd, b"exit 5\r")
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)
    finally:
        os.close(fd)


def test_exec_it_and_run_it_under_a_pty(eng: Engine) -> None:
    eng.ok("run", "-d", "--name", "tty", "busybox", "sleep", "300")
    try:
        assert _pty_session(eng, ["exec", "-it", "tty", "sh"], b"echo $((6*7))", b"42\r\n") == 5
    finally:
        eng.docker("rm", "-f", "tty")
    assert _pty_session(eng, ["run", "-it", "--rm", "busybox", "sh"], b"echo $((2*3))x", b"6x\r\n") == 5
    assert eng.leftovers() == []


def test_detach_keys_leave_a_tty_container_running_and_attachable(eng: Engine) -> None:
    """``docker run -it`` (StdinOnce, which the CLI sets for -i) left with ctrl-p ctrl-q: the CLI
    spots the keys and hangs up; the daemon must leave a terminal's stdin open (moby closes
    it at the end of an attach only without a TTY), so the shell runs on and ``docker attach``
    and ``docker start -ai`` reach it again. The process has TERM=xterm and HOSTNAME."""
    docker = eng.cli or "docker"
    try:
        for n, args in enumerate(
            (["run", "-it", "--name", "dt", "busybox", "sh"], ["attach", "dt"], ["start", "-ai", "dt"])
        ):
            if args[0] == "start":
                eng.ok("stop", "-t", "0", "dt")
            session = PtyProcess([docker, *args], eng.env)
            try:
                if args[0] != "attach":
                    session.read_until(b"# ")
                session.write(f"echo typed-$((40+{n})) $TERM $HOSTNAME\r".encode())
                short_id = eng.ok("inspect", "-f", "{{.Id}}", "dt").strip()[:12]
                session.read_until(f"typed-{40 + n} xterm {short_id}\r\n".encode())
                session.write(b"\x10\x11")
                code = session.wait()
                if args[0] == "attach":  # the 20.10 CLI reports the detach of ``attach`` as an error
                    assert code in (0, 1) and (code == 0 or b"read escape sequence" in session.out), session.out
                else:
                    assert code == 0, session.out
            finally:
                session.close()
            time.sleep(0.5)  # a stdin closed at the detach would end the shell by now
            state = json.loads(eng.ok("inspect", "dt"))[0]
            assert state["State"]["Running"] and state["Config"]["StdinOnce"], state["State"]
            assert [e.split("=")[0] for e in state["Config"]["Env"]] == ["PATH"]  # no HOSTNAME/TERM: Docker's
    finally:
        eng.docker("rm", "-f", "dt")
    assert eng.leftovers() == []


def test_top_stats_pause_unpause(eng: Engine) -> None:
    eng.ok("run", "-d", "--name", "obs", "busybox", "sleep", "300")
    try:
        top = eng.ok("top", "obs").splitlines()
        assert "PID" in top[0] and any("sleep 300" in line for line in top[1:])
        stats = eng.ok("stats", "--no-stream", "--format", "{{.Name}} {{.PIDs}} {{.MemUsage}}", "obs")
        name, pids, mem = stats.split(" ", 2)
        assert name == "obs" and pids == "1" and "iB" in mem
        eng.ok("pause", "obs")
        assert "(Paused)" in eng.ok("ps", "--filter", "name=obs", "--format", "{{.Status}}")
        r = eng.docker("pause", "obs")
        assert r.returncode != 0 and b"already paused" in r.stderr
        eng.ok("unpause", "obs")
        assert eng.ok("inspect", "-f", "{{.State.Status}}", "obs").strip() == "running"
    finally:
        eng.docker("rm", "-f", "obs")


def test_images_tag_rmi_save_load(eng: Engine) -> None:
    images = eng.ok("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}")
    assert "busybox:latest" in images
    eng.ok("tag", "busybox", "mybox:v1")
    listed = eng.ok("images", "--format", "{{.Repository}}:{{.Tag}}")
    assert "mybox:v1" in listed.split()
    image_id = json.loads(eng.ok("image", "inspect", "mybox:v1"))[0]["Id"]
    assert image_id == json.loads(eng.ok("image", "inspect", "busybox"))[0]["Id"]
    archive = subprocess.run(
        [eng.cli or "docker", "save", "mybox:v1"], env=eng.env, capture_output=True, timeout=60, check=True
    ).stdout
    assert archive[257:262] == b"ustar"
    assert "Untagged: mybox:v1" in eng.ok("rmi", "mybox:v1")
    assert "mybox" not in eng.ok("images")
    assert "Loaded image: mybox:v1" in eng.ok("load", input=archive)
    assert eng.ok("run", "--rm", "mybox:v1", "echo", "loaded") == "loaded\n"
    eng.ok("rmi", "mybox:v1")
    r = eng.docker("rmi", "nothere:1")
    assert r.returncode != 0 and b"No such image: nothere:1" in r.stderr


def test_push_and_pull_through_a_local_registry(eng: Engine) -> None:
    with Registry() as reg:
        name = f"{reg.host}/test/box:1"
        eng.ok("tag", "busybox", name)
        pushed = eng.ok("push", name, timeout=120)
        assert "digest: sha256:" in pushed
        eng.ok("rmi", name)
        pulled = eng.ok("pull", name, timeout=120)
        assert "Downloaded newer image" in pulled or "Image is up to date" in pulled
        assert eng.ok("run", "--rm", name, "echo", "pulled") == "pulled\n"
        r = eng.docker("pull", f"{reg.host}/test/missing:1", timeout=60)
        assert r.returncode != 0 and r.stderr
        eng.ok("rmi", name)


def test_events_since_replays_the_journal(eng: Engine) -> None:
    since = str(int(time.time()) - 1)
    eng.ok("run", "--rm", "--name", "evt", "busybox", "true")
    until = str(int(time.time()) + 1)
    out = eng.ok(
        "events", "--since", since, "--until", until, "--filter", "container=evt", "--format", "{{json .}}", timeout=30
    )
    events = [json.loads(line) for line in out.splitlines()]
    actions = [e["Action"] for e in events]
    assert actions[:1] == ["create"] and "start" in actions and "die" in actions and actions[-1] == "destroy"
    assert actions.index("start") < actions.index("die") < actions.index("destroy")
    die = events[actions.index("die")]
    assert die["Actor"]["Attributes"]["exitCode"] == "0" and die["Actor"]["Attributes"]["name"] == "evt"


def test_double_start_stop_and_removing_a_running_container(eng: Engine) -> None:
    """Case C25: 304 for a double start/stop, 409 for rm of a running one (left running)."""
    created = eng.json("POST", "/v1.45/containers/create?name=c25", {"Image": "busybox", "Cmd": ["sleep", "300"]})
    cid = created["Id"]
    try:
        assert eng.api("POST", f"/v1.45/containers/{cid}/start")[0] == 204
        status, _h, body = eng.api("POST", f"/v1.45/containers/{cid}/start")
        assert (status, body) == (304, b"")
        status, _h, body = eng.api("DELETE", f"/v1.45/containers/{cid}")
        assert status == 409
        assert json.loads(body)["message"].startswith(f"You cannot remove a running container {cid}")
        assert eng.json("GET", f"/v1.45/containers/{cid}/json")["State"]["Running"] is True
        assert eng.api("POST", f"/v1.45/containers/{cid}/stop?t=1")[0] == 204
        assert eng.api("POST", f"/v1.45/containers/{cid}/stop")[0] == 304
        status, _h, body = eng.api("POST", f"/v1.45/containers/{cid}/kill")
        assert status == 409 and json.loads(body)["message"] == f"Container {cid} is not running"
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            codes = list(pool.map(lambda _: eng.api("POST", f"/v1.45/containers/{cid}/start")[0], range(10)))
        assert sorted(codes) == [204] + [304] * 9
        assert eng.api("DELETE", f"/v1.45/containers/{cid}?force=1")[0] == 204
        assert eng.api("GET", f"/v1.45/containers/{cid}/json")[0] == 404
    finally:
        eng.api("DELETE", f"/v1.45/containers/{cid}?force=1")


def test_gateway_killed_during_logs_follow(eng: Engine) -> None:
    """The gateway keeps no state: SIGKILL ends a follow, the container runs on, the supervisor restarts it."""
    eng.ok("run", "-d", "--name", "chatty", "busybox", "sh", "-c", "while true; do echo tick; sleep 0.2; done")
    follow = subprocess.Popen(
        [eng.cli or "docker", "logs", "-f", "chatty"], env=eng.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert follow.stdout is not None and follow.stdout.readline() == b"tick\n"
        old = eng.inst.pid("gateway")
        os.kill(old, signal.SIGKILL)
        follow.wait(timeout=15)  # the client sees the stream end
        _wait(lambda: os.path.exists(eng.sock) and eng.docker("ps", "-q").returncode == 0, 30, "gateway restarted")
        assert eng.inst.pid("gateway") != old
        assert eng.ok("inspect", "-f", "{{.State.Running}}", "chatty").strip() == "true"
        assert eng.ok("logs", "--tail", "1", "chatty") == "tick\n"
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
        eng.docker("rm", "-f", "chatty")


def test_docker_events_follows_across_a_restart_of_the_events_service(eng: Engine) -> None:
    """``docker events`` keeps its stream when the events service is SIGKILLed: the gateway
    resumes after the last event it sent (the supervisor restarts the service)."""
    follow = subprocess.Popen(
        [
            eng.cli or "docker",
            "events",
            "--filter",
            "type=container",
            "--format",
            "{{.Action}} {{.Actor.Attributes.name}}",
        ],
        env=eng.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1.0)  # subscribed
        eng.ok("run", "--rm", "--name", "evb", "busybox", "true")
        assert follow.stdout is not None
        # dockerd's for a foreground run --rm: create, attach, start, die, destroy
        seen = [follow.stdout.readline().decode().strip() for _ in range(5)]
        assert seen == ["create evb", "attach evb", "start evb", "die evb", "destroy evb"], seen
        old = eng.inst.pid("events")
        os.kill(old, signal.SIGKILL)
        _wait(lambda: eng.inst.pid("events") != old, 30, "events restarted")
        eng.ok("run", "--rm", "--name", "eva", "busybox", "true")
        after = [follow.stdout.readline().decode().strip() for _ in range(5)]
        assert after == ["create eva", "attach eva", "start eva", "die eva", "destroy eva"], after
        assert follow.poll() is None
    finally:
        follow.kill()
        follow.wait()


def test_docker_logs_and_tail_of_a_multi_mb_log(eng: Engine) -> None:
    """Regression (logs of a big log read whole on the event loop): ``docker logs`` streams a
    7 MB json-file log whole, ``--tail`` reads only its end, a negative tail means all."""
    eng.ok("run", "-d", "--name", "biglog", "busybox", "seq", "1", "100000")
    try:
        assert eng.ok("wait", "biglog", timeout=60) == "0\n"
        expected = "".join(f"{i}\n" for i in range(1, 100_001))
        assert eng.ok("logs", "biglog", timeout=60) == expected
        assert eng.ok("logs", "--tail", "3", "biglog") == "99998\n99999\n100000\n"
        stamped = [x.split(" ") for x in eng.ok("logs", "-t", "--tail", "2", "biglog").splitlines()]
        assert [x[1] for x in stamped] == ["99999", "100000"] and all(x[0].endswith("Z") for x in stamped)
        status, headers, body = eng.api("GET", "/v1.45/containers/biglog/logs?stdout=1&tail=2")
        assert status == 200 and headers["content-type"] == "application/vnd.docker.multiplexed-stream"
        assert body == b"\x01\x00\x00\x00" + struct.pack(">I", 13) + b"99999\n100000\n"
        status, _h, body = eng.api("GET", "/v1.45/containers/biglog/logs?stdout=1&tail=-1")
        out = b""
        while body:  # demultiplex: [stream, 0, 0, 0, size uint32 BE] + payload
            size = struct.unpack(">I", body[4:8])[0]
            assert body[0] == 1
            out += body[8 : 8 + size]
            body = body[8 + size :]
        assert status == 200 and out == expected.encode()
    finally:
        eng.docker("rm", "-f", "biglog")


def test_debian_docker_20_10_client(eng: Engine) -> None:
    """The older CLI (API 1.41, accepts 200 or 101 on attach) works too, when installed."""
    if not os.access("/usr/bin/docker", os.X_OK) or eng.cli == "/usr/bin/docker":
        pytest.skip("Debian's docker.io client is not installed")
    r = eng.docker("run", "--rm", "-i", "busybox", "sh", "-c", "cat; exit 4", input=b"old", cli="/usr/bin/docker")
    assert (r.returncode, r.stdout) == (4, b"old"), r.stderr


def test_volumes(eng: Engine) -> None:
    assert eng.ok("volume", "create", "--label", "k=v", "gwvol").strip() == "gwvol"
    eng.ok("run", "--rm", "-v", "gwvol:/data", "busybox", "sh", "-c", "echo kept > /data/f")
    assert eng.ok("run", "--rm", "-v", "gwvol:/data", "busybox", "cat", "/data/f") == "kept\n"
    assert "gwvol" in eng.ok("volume", "ls", "-q", "--filter", "label=k=v").split()
    assert json.loads(eng.ok("volume", "inspect", "gwvol"))[0]["Labels"] == {"k": "v"}
    eng.ok("volume", "rm", "gwvol")
    r = eng.docker("volume", "inspect", "gwvol")
    assert r.returncode != 0 and b"no such volume" in r.stderr.lower()

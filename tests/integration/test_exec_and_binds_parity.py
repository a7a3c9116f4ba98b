"""Docker API parity defects a walkthrough with the real docker CLI and docker-py found, each
checked against dockerd 20.10 and moby's sources:

- ``exec_run("id", user="nosuch")`` got 400 at exec create. dockerd resolves an exec's user
  at its start (``ContainerExecStart``), so the create succeeds and the start fails: exit
  code 126, the stream says ``unable to find user nosuch: no matching entries in passwd
  file``; ``docker exec -u nosuch`` exits 126, ``docker exec -d -u nosuch`` 1;
- a detached exec start answered ``{}``; dockerd answers 200 with an empty body (docker-py
  returns ``''``), as for a resize; start/stop/kill/pause/unpause/rename are 204/304;
- ``HostConfig.Binds: ["/anon2"]`` (docker-py ``volumes=["/anon2"]``) got 400 ``invalid
  bind mount spec``; moby's ``ParseMountRaw`` makes a lone container path an anonymous
  volume (removed with ``v=1`` and ``--rm``) and refuses ``/data:ro`` (``invalid volume
  specification``); ``Config.Volumes`` (``docker run -v /c``) is an anonymous volume too;
- ``echo x | docker attach c`` of a ``run -d -i`` container (no TTY, StdinOnce false)
  streamed until the container exited. moby (``container/stream/attach.go``: without
  ``CloseStdin`` the stdin EOF closes the attach's stdout and stderr) ends the stream at
  the client's half-close and leaves the container's stdin open; the docker CLI then waits
  for the container's exit and exits with its code, printing nothing more.

One instance started with ``dockyard up`` (every service, real runc, the gateway's socket)
serves the module; the cases go through the real docker CLI, docker-py, raw HTTP and
``dockyard``.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import need_root
from tests.gateway_util import Engine, engine, read_all

docker = pytest.importorskip("docker")

NO_USER = b"unable to find user nosuch: no matching entries in passwd file"


@pytest.fixture(scope="module")
def eng() -> Iterator[Engine]:
    need_root()
    with engine() as e:
        yield e


@pytest.fixture
def client(eng: Engine) -> Iterator[Any]:
    c = docker.DockerClient(base_url=f"unix://{eng.sock}", timeout=60)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def sleeper(eng: Engine) -> str:
    eng.ok("run", "-d", "--name", "sleeper", "busybox", "sleep", "1000")
    return "sleeper"


def dy(eng: Engine, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return eng.inst.cli(*args, input=input, timeout=60)


def volume_names(eng: Engine) -> set[str]:
    return {v["Name"] for v in eng.json("GET", "/volumes")["Volumes"] or []}


# -- 1. an unknown exec user fails at the start, with 126 ----------------------------------------------------


def test_exec_as_unknown_user_is_created_then_fails_at_start_with_126(eng: Engine, client: Any, sleeper: str) -> None:
    result = client.containers.get(sleeper).exec_run("id", user="nosuch")
    assert result.exit_code == 126, result
    assert result.output in (b"", NO_USER + b"\r\n"), result  # dockerd's own reply loses it to a race

    status, _h, body = eng.api("POST", f"/containers/{sleeper}/exec", {"Cmd": ["id"], "User": "nosuch"})
    assert status == 201, body
    exec_id = json.loads(body)["Id"]
    before = eng.json("GET", f"/exec/{exec_id}/json")
    assert (before["Running"], before["ExitCode"], before["ProcessConfig"]["user"]) == (False, None, "nosuch")
    status, _h, streamed = eng.api("POST", f"/exec/{exec_id}/start", {"Detach": False, "Tty": False})
    assert status == 200 and NO_USER in streamed, (status, streamed)
    after = eng.json("GET", f"/exec/{exec_id}/json")
    assert (after["Running"], after["ExitCode"]) == (False, 126), after

    exec_id = eng.json("POST", f"/containers/{sleeper}/exec", {"Cmd": ["id"], "User": "nosuch"})["Id"]
    status, _h, body = eng.api("POST", f"/exec/{exec_id}/start", {"Detach": True})
    assert status >= 400 and json.loads(body)["message"] == NO_USER.decode(), (status, body)
    assert eng.json("GET", f"/exec/{exec_id}/json")["ExitCode"] == 126
    assert client.containers.get(sleeper).exec_run(["id", "-u"], user="nobody") == (0, b"65534\n")


def test_docker_and_dockyard_exec_as_unknown_user_exit_126(eng: Engine, sleeper: str) -> None:
    r = eng.docker("exec", "-u", "nosuch", sleeper, "id")
    assert r.returncode == 126 and NO_USER in r.stdout + r.stderr, (r.returncode, r.stdout, r.stderr)
    r = eng.docker("exec", "-d", "-u", "nosuch", sleeper, "id")
    assert r.returncode == 1 and NO_USER in r.stderr, (r.returncode, r.stderr)
    r = dy(eng, "exec", "-u", "nosuch", sleeper, "id")
    assert r.returncode == 126 and r.stderr == b"error: " + NO_USER + b"\n", (r.returncode, r.stderr)
    r = dy(eng, "exec", "-d", "-u", "nosuch", sleeper, "id")
    assert r.returncode == 1 and NO_USER in r.stderr, (r.returncode, r.stderr)
    r = dy(eng, "exec", "-u", "nosuch:nogroup", sleeper, "id")
    assert r.returncode == 126 and NO_USER in r.stderr, (r.returncode, r.stderr)
    assert eng.json("GET", f"/containers/{sleeper}/json")["State"]["Running"]


# -- 2. no body where dockerd sends none --------------------------------------------------------------------


def test_detached_exec_start_and_resizes_answer_200_with_an_empty_body(eng: Engine, client: Any, sleeper: str) -> None:
    """Also a resize of what has no terminal: containerd's shim ignores it, dockerd says 200."""
    c = client.containers.run("busybox", ["sleep", "300"], detach=True, tty=True, name="nobody-body")
    try:
        result = c.exec_run(["sh", "-c", "echo bg > /tmp/bg"], detach=True)
        assert result.output == "", result  # docker-py returns the (empty) text of the 200
        exec_ids = []
        for tty, ref in ((True, c.id), (False, sleeper)):
            exec_id = eng.json("POST", f"/containers/{ref}/exec", {"Cmd": ["sleep", "30"], "Tty": tty})["Id"]
            status, headers, body = eng.api("POST", f"/exec/{exec_id}/start", {"Detach": True, "Tty": tty})
            assert (status, body, headers.get("content-length")) == (200, b"", "0"), (status, headers, body)
            assert "content-type" not in headers, headers
            exec_ids.append(exec_id)
        for path in (
            *(f"/exec/{exec_id}/resize?h=10&w=20" for exec_id in exec_ids),
            f"/containers/{c.id}/resize?h=10&w=20",
            f"/containers/{sleeper}/resize?h=10&w=20",
        ):
            status, headers, body = eng.api("POST", path)
            assert (status, body, headers.get("content-length")) == (200, b"", "0"), (path, status, headers, body)
            assert "content-type" not in headers, (path, headers)
        for method, path, want in (
            ("POST", f"/containers/{c.id}/pause", 204),
            ("POST", f"/containers/{c.id}/unpause", 204),
            ("POST", f"/containers/{c.id}/rename?name=nobody-body2", 204),
            ("POST", f"/containers/{c.id}/kill?signal=SIGWINCH", 204),
            ("POST", f"/containers/{c.id}/start", 304),
            ("POST", f"/containers/{c.id}/stop?t=0", 204),
            ("POST", f"/containers/{c.id}/stop?t=0", 304),
            ("POST", f"/containers/{c.id}/start", 204),
            ("POST", f"/containers/{c.id}/restart?t=0", 204),
        ):
            status, headers, body = eng.api(method, path)
            assert (status, body) == (want, b""), (path, status, body)
            assert "content-type" not in headers and "content-length" not in headers, (path, headers)
        assert eng.json("GET", f"/containers/{c.id}/json")["Name"] == "/nobody-body2"
    finally:
        c.remove(force=True)


# -- 3. Binds with a container path alone -------------------------------------------------------------------


def test_bind_of_a_container_path_alone_is_an_anonymous_volume(eng: Engine, client: Any) -> None:
    known = volume_names(eng)
    c = client.containers.create("busybox", ["sh", "-c", "echo kept > /anon2/f; cat /anon2/f"], volumes=["/anon2"])
    try:
        c.start()
        assert c.wait(timeout=30)["StatusCode"] == 0
        assert c.logs() == b"kept\n"
        mounts = client.api.inspect_container(c.id)["Mounts"]
        assert [(m["Type"], m["Destination"], m["RW"]) for m in mounts] == [("volume", "/anon2", True)], mounts
        name = mounts[0]["Name"]
        assert re.fullmatch(r"[0-9a-f]{64}", name) and mounts[0]["Source"].endswith(f"/{name}/_data"), mounts
        assert volume_names(eng) - known == {name}
    finally:
        c.remove(v=True)
    assert volume_names(eng) == known  # v=1 removes the anonymous volume with the container

    created = eng.json(
        "POST",
        "/containers/create",
        {"Image": "busybox", "Cmd": ["true"], "HostConfig": {"Binds": ["/anon4/"], "AutoRemove": True}},
    )
    eng.json("POST", f"/containers/{created['Id']}/start")
    eng.json("POST", f"/containers/{created['Id']}/wait?condition=removed")
    assert volume_names(eng) == known  # so does AutoRemove


def test_docker_run_rm_v_container_path_uses_and_removes_an_anonymous_volume(eng: Engine) -> None:
    known = volume_names(eng)
    out = eng.ok("run", "--rm", "-v", "/anon3", "busybox", "sh", "-c", "echo x > /anon3/f && cat /anon3/f")
    assert out == "x\n"
    assert volume_names(eng) == known
    eng.ok("run", "--name", "keepsvol", "-v", "/anon5", "busybox", "true")  # Config.Volumes
    try:
        mounts = eng.json("GET", "/containers/keepsvol/json")["Mounts"]
        assert [(m["Type"], m["Destination"]) for m in mounts] == [("volume", "/anon5")], mounts
        assert volume_names(eng) - known == {mounts[0]["Name"]}
    finally:
        eng.ok("rm", "-v", "keepsvol")
    assert volume_names(eng) == known


@pytest.mark.parametrize(
    ("binds", "message"),
    [
        (["/data:ro"], "invalid volume specification: '/data:ro'"),
        (["/data:rw"], "invalid volume specification: '/data:rw'"),
        (["/a:/b:/c:ro"], "invalid volume specification: '/a:/b:/c:ro'"),
        (["/tmp:/x:bogus"], "invalid mode: bogus"),
        (["/tmp:/x:ro,rw"], "invalid mode: ro,rw"),
        (
            ["rel"],
            "invalid volume specification: 'rel': invalid mount config for type \"volume\": "
            "invalid mount path: 'rel' mount path must be absolute",
        ),
        (
            ["/"],
            "invalid volume specification: '/': invalid mount config for type \"volume\": "
            "invalid specification: destination can't be '/'",
        ),
    ],
)
def test_binds_moby_refuses_are_refused_with_its_words(eng: Engine, binds: list[str], message: str) -> None:
    before = eng.leftovers()
    status, _h, body = eng.api(
        "POST", "/containers/create", {"Image": "busybox", "Cmd": ["true"], "HostConfig": {"Binds": binds}}
    )
    assert (status, json.loads(body)["message"]) == (400, message)
    assert eng.leftovers() == before


# -- 4. stdin EOF of an attach without StdinOnce ------------------------------------------------------------

_COUNTER = "i=0; while [ $i -lt 8 ]; do echo n$i; i=$((i+1)); sleep 0.5; done; exit 3"


def test_attach_stdin_eof_without_stdin_once_ends_the_stream(eng: Engine) -> None:
    """Raw API: the half-close ends the attach at once; the container runs on, stdin open."""
    cid = eng.ok("run", "-d", "-i", "busybox", "sh", "-c", "while true; do echo tick; sleep 0.2; done").strip()
    try:
        assert not eng.json("GET", f"/containers/{cid}/json")["Config"]["StdinOnce"]
        head, sock = eng.hijack(f"/containers/{cid}/attach?stream=1&stdin=1&stdout=1&stderr=1", timeout=10)
        with sock:
            assert head.startswith("HTTP/1.1 101"), head
            sock.sendall(b"y\n")
            sock.shutdown(socket.SHUT_WR)
            t0 = time.monotonic()
            read_all(sock)  # a socket timeout (10 s) here is the defect: the stream went on
            assert time.monotonic() - t0 < 5
        time.sleep(0.5)
        assert eng.json("GET", f"/containers/{cid}/json")["State"]["Running"]
    finally:
        eng.ok("rm", "-f", cid)


@pytest.mark.parametrize("cli", ["docker", "dockyard"])
def test_docker_attach_of_run_d_i_waits_for_the_exit_but_streams_no_more(eng: Engine, cli: str) -> None:
    """``echo x | docker attach c``: no output after the stdin EOF, exit code of the container
    (3) once it exits, as the docker CLI does against dockerd; ``dockyard attach`` the same."""
    cid = eng.ok("run", "-d", "-i", "busybox", "sh", "-c", _COUNTER).strip()
    try:
        t0 = time.monotonic()
        r = eng.docker("attach", cid, input=b"x\n") if cli == "docker" else dy(eng, "attach", cid, input=b"x\n")
        took = time.monotonic() - t0
        assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
        assert b"n7" not in r.stdout and took > 1.5, (r.stdout, took)  # it waited for the exit, silent
    finally:
        eng.ok("rm", "-f", cid)


def test_attach_stdin_eof_with_stdin_once_closes_the_container_stdin(eng: Engine) -> None:
    """The other half of moby's rule: with StdinOnce (``docker run -i``) the EOF closes the
    container's stdin and the output goes on until it ends."""
    r = eng.docker("run", "-i", "--rm", "busybox", "sh", "-c", "cat; echo got-eof", input=b"typed\n")
    assert (r.returncode, r.stdout) == (0, b"typed\ngot-eof\n"), r.stderr

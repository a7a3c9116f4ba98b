"""The Docker SDK for Python (docker-py) as a client of Dockyard (issue 7, "what it must show" 2),
plus the stream rules it depends on (cases C22, C23)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from common import dockerfmt
from tests.gateway_util import Engine, docker_py, read_all
from tests.registry import Registry, skopeo_copy

docker = pytest.importorskip("docker")


@pytest.fixture
def client(eng: Engine) -> Iterator[Any]:
    with docker_py(eng) as c:
        yield c


def test_run_remove_returns_the_output(client: Any, eng: Engine) -> None:
    assert client.containers.run("busybox", ["sh", "-c", "echo out; echo err >&2"], remove=True) == b"out\n"
    with pytest.raises(docker.errors.ContainerError) as err:
        client.containers.run("busybox", ["sh", "-c", "echo bad >&2; exit 3"], remove=True)
    assert err.value.exit_status == 3 and b"bad" in err.value.stderr
    assert eng.leftovers() == []


def test_detached_run_logs_stream_wait(client: Any) -> None:
    c = client.containers.run("busybox", ["sh", "-c", "for i in 1 2 3; do echo n$i; sleep 0.2; done"], detach=True)
    try:
        assert b"".join(c.logs(stream=True, follow=True)) == b"n1\nn2\nn3\n"
        assert c.wait(timeout=30) == {"StatusCode": 0, "Error": None}
        c.reload()
        assert c.status == "exited" and c.attrs["State"]["ExitCode"] == 0
    finally:
        c.remove(force=True)


def test_exec_run(client: Any) -> None:
    c = client.containers.run("busybox", ["sleep", "300"], detach=True)
    try:
        for _ in range(3):  # output must never be lost right after the 101
            assert c.exec_run(["sh", "-c", "echo exec-out"]) == (0, b"exec-out\n")
        assert c.exec_run(["sh", "-c", "exit 4"]).exit_code == 4
        out, err = c.exec_run(["sh", "-c", "echo o; echo e >&2"], demux=True).output
        assert (out, err) == (b"o\n", b"e\n")
        tty = client.api.exec_create(c.id, ["printf", "a\\n"], tty=True)
        assert client.api.exec_start(tty["Id"], tty=True) == b"a\r\n"  # a TTY: raw, \n -> \r\n
    finally:
        c.remove(force=True)


def test_attach_socket_stdin_half_close_reaches_the_container(client: Any, eng: Engine) -> None:
    """Case C22 over the API: OpenStdin+StdinOnce, write, shut the write half -> cat ends with the bytes."""
    created = eng.json(
        "POST",
        "/v1.45/containers/create",
        {"Image": "busybox", "Cmd": ["cat"], "OpenStdin": True, "StdinOnce": True, "AttachStdin": True},
    )
    cid = created["Id"]
    try:
        sock = client.api.attach_socket(cid, params={"stdin": 1, "stdout": 1, "stream": 1})
        raw = sock._sock
        client.api.start(cid)
        raw.sendall(b"abc")
        raw.shutdown(socket.SHUT_WR)
        buf = bytearray(read_all(raw))
        assert dockerfmt.demux(buf) == [(1, b"abc")] and not buf  # one stdout frame, length 3
        assert client.api.wait(cid, timeout=30)["StatusCode"] == 0
    finally:
        client.api.remove_container(cid, force=True)


def test_tty_output_is_raw_and_non_tty_is_multiplexed(client: Any, eng: Engine) -> None:
    """Case C23: logs of a TTY container keep their first bytes; non-TTY frames carry stream ids."""
    tty = client.containers.run("busybox", ["printf", "Hello this is a bug\\n"], tty=True, detach=True)
    plain = client.containers.run("busybox", ["sh", "-c", "printf out; printf err >&2"], detach=True)
    try:
        tty.wait(timeout=30)
        plain.wait(timeout=30)
        assert tty.logs() == b"Hello this is a bug\r\n"
        status, headers, body = eng.api("GET", f"/v1.45/containers/{plain.id}/logs?stdout=1&stderr=1")
        assert status == 200 and headers["content-type"] == "application/vnd.docker.multiplexed-stream"
        assert dockerfmt.demux(bytearray(body)) == [(1, b"out"), (2, b"err")]
        status, headers, body = eng.api("GET", f"/v1.45/containers/{tty.id}/logs?stdout=1")
        assert headers["content-type"] == "application/vnd.docker.raw-stream" and body == b"Hello this is a bug\r\n"
    finally:
        tty.remove(force=True)
        plain.remove(force=True)


def test_images_pull_and_events(client: Any, eng: Engine, tmp_path: Any) -> None:
    since = int(time.time()) - 1
    with Registry() as reg:
        layout = tmp_path / "layout.tar"
        from deploy import mkimage

        img = mkimage.build_image("pyimg:1", [mkimage.busybox_rootfs_tar()])
        mkimage.write_docker_archive([img], str(layout))
        skopeo_copy(f"docker-archive:{layout}", f"docker://{reg.host}/py/img:1")
        pulled = client.images.pull(f"{reg.host}/py/img", tag="1")
        assert f"{reg.host}/py/img:1" in pulled.tags
        assert client.containers.run(f"{reg.host}/py/img:1", ["echo", "ok"], remove=True) == b"ok\n"
        client.images.remove(f"{reg.host}/py/img:1")
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get(f"{reg.host}/py/img:1")
    events = list(client.events(since=since, until=int(time.time()) + 1, decode=True))
    actions = [(e["Type"], e["Action"]) for e in events]
    assert ("container", "start") in actions and ("container", "die") in actions
    assert ("image", "untag") in actions
    assert all({"Type", "Action", "Actor", "time", "timeNano", "scope"} <= e.keys() for e in events)


def test_errors_map_to_docker_py_exceptions(client: Any) -> None:
    with pytest.raises(docker.errors.NotFound) as err:
        client.containers.get("nope")
    assert "No such container: nope" in str(err.value)
    # create answers 404 "No such image", docker-py then pulls: Docker Hub's 404 (ImageNotFound) with
    # a network, the pull's 503 "registry registry-1.docker.io: cannot connect" without one
    with pytest.raises(docker.errors.APIError) as missing:
        client.containers.run("nothere:1", ["true"])
    assert missing.value.status_code in (404, 503)
    c = client.containers.run("busybox", ["sleep", "300"], detach=True, name="pyrunning")
    try:
        with pytest.raises(docker.errors.APIError) as api_err:
            c.remove()
        assert api_err.value.status_code == 409 and "stop the container before" in str(api_err.value).lower()
        with pytest.raises(docker.errors.APIError) as clash:
            client.containers.create("busybox", ["true"], name="pyrunning")
        assert clash.value.status_code == 409 and 'The container name "/pyrunning" is already in use' in str(
            clash.value
        )
    finally:
        c.remove(force=True)


def test_the_rest_of_the_container_and_image_api(client: Any, eng: Engine) -> None:
    """restart, update, resize, stats (stream and one-shot), diff, export, history, import, list filters."""
    c = client.containers.run("busybox", ["sh", "-c", "touch /made; sleep 300"], detach=True, labels={"k": "v"})
    try:
        assert [x.id for x in client.containers.list(filters={"label": "k=v"})] == [c.id]  # list encoding
        assert client.containers.list(filters={"label": "k=other"}) == []
        status, _h, body = eng.api("GET", "/containers/json?filters=%7B%22label%22%3A%7B%22k%3Dv%22%3Atrue%7D%7D")
        assert status == 200 and [x["Id"] for x in json.loads(body)] == [c.id]  # the Go CLI's map encoding
        started = c.attrs["State"]["StartedAt"]
        c.restart(timeout=1)
        c.reload()
        assert c.status == "running" and c.attrs["State"]["StartedAt"] != started
        c.update(mem_limit="64m", memswap_limit="128m")
        assert client.api.inspect_container(c.id)["HostConfig"]["Memory"] == 64 << 20
        c.resize(30, 100)  # no terminal, nothing to resize: dockerd answers 200 (containerd's shim ignores it)
        one = c.stats(stream=False)
        assert one["pids_stats"]["current"] >= 1 and one["memory_stats"]["usage"] > 0
        stream = c.stats(stream=True, decode=True)
        first, second = next(stream), next(stream)
        assert second["precpu_stats"]["cpu_usage"]["total_usage"] == first["cpu_stats"]["cpu_usage"]["total_usage"]
        stream.close()
        time.sleep(0.3)
        assert {"Path": "/made", "Kind": 1} in c.diff()
        tar = b"".join(c.export())
        assert b"bin/busybox" in tar and tar[257:262] == b"ustar"
    finally:
        c.remove(force=True)
    history = client.api.history("busybox")
    assert history and history[0]["Id"].startswith("sha256:")
    imported = client.api.import_image_from_data(tar, repository="imported", tag="1")
    assert "sha256:" in str(imported)
    assert client.containers.run("imported:1", ["echo", "from-import"], remove=True) == b"from-import\n"
    client.images.remove("imported:1")

"""``docker cp`` against Dockyard: the real docker CLI, docker-py and ``dockyard cp`` through
``HEAD|GET|PUT /containers/{id}/archive`` (moby's semantics), into running and stopped
containers, through volumes, and the attempts to leave the container's root refused."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import os
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gateway_util import Engine

GO_MODE_DIR = 1 << 31
GO_MODE_SYMLINK = 1 << 27


@pytest.fixture
def work() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="dy-cp-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def running(eng: Engine) -> Iterator[str]:
    name = f"cp-run-{uuid.uuid4().hex[:6]}"
    eng.ok("run", "-d", "--name", name, "-v", f"{name}-vol:/data", "busybox", "sleep", "600")
    try:
        yield name
    finally:
        eng.docker("rm", "-f", "-v", name)
        eng.docker("volume", "rm", f"{name}-vol")


def sh(eng: Engine, container: str, script: str) -> str:
    return eng.ok("exec", container, "sh", "-c", script)


def stat_header(eng: Engine, container: str, path: str) -> tuple[int, dict[str, Any] | None, bytes]:
    status, headers, body = eng.api("HEAD", f"/containers/{container}/archive?path={path}")
    raw = headers.get("x-docker-container-path-stat")
    return status, (json.loads(base64.b64decode(raw)) if raw else None), body


def tar_of(*entries: tuple[str, str, bytes | str]) -> bytes:
    """A tar built by hand: ``(name, kind f|d|l, data or link target)``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, data in entries:
            ti = tarfile.TarInfo(name)
            ti.mode = 0o644
            if kind == "f":
                assert isinstance(data, bytes)
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
            elif kind == "d":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                t.addfile(ti)
            else:
                ti.type, ti.linkname = tarfile.SYMTYPE, str(data)
                t.addfile(ti)
    return buf.getvalue()


def no_archive_mounts(eng: Engine) -> list[str]:
    """The temporary snapshot mounts of this instance still present."""
    import time

    t0 = time.monotonic()
    while True:
        left = [line for line in Path("/proc/self/mounts").read_text().splitlines() if "archive-mnt" in line]
        if not left or time.monotonic() - t0 > 5:
            return left
        time.sleep(0.05)


# -- the docker CLI ------------------------------------------------------------------------------
def test_docker_cp_into_a_running_container(eng: Engine, running: str, work: Path) -> None:
    (work / "f.txt").write_text("hello file\n")
    (work / "d" / "sub").mkdir(parents=True)
    (work / "d" / "a").write_text("A\n")
    (work / "d" / "sub" / "b").write_text("B\n")
    os.chmod(work / "d" / "a", 0o751)
    sh(eng, running, "mkdir -p /tmp/existing")

    eng.ok("cp", str(work / "f.txt"), f"{running}:/tmp/")  # into a directory: keeps its name
    eng.ok("cp", str(work / "f.txt"), f"{running}:/tmp/renamed.txt")  # to a new name
    eng.ok("cp", str(work / "d"), f"{running}:/tmp/newdir")  # a directory to a missing path: becomes it
    eng.ok("cp", str(work / "d"), f"{running}:/tmp/existing")  # to an existing directory: goes inside
    eng.ok("cp", f"{work / 'd'}/.", f"{running}:/tmp/contents")  # dir/. : the contents
    sh(eng, running, "mkdir -p /tmp/into && echo old > /tmp/into/a")
    eng.ok("cp", f"{work / 'd'}/.", f"{running}:/tmp/into")
    out = sh(
        eng,
        running,
        "cat /tmp/f.txt /tmp/renamed.txt /tmp/newdir/a /tmp/newdir/sub/b /tmp/existing/d/a /tmp/contents/sub/b "
        "/tmp/into/a; stat -c %a /tmp/newdir/a",
    )
    assert out == "hello file\nhello file\nA\nB\nA\nB\nA\n751\n"

    # docker's refusals: a directory onto a file, a file to a missing directory
    r = eng.docker("cp", str(work / "d"), f"{running}:/tmp/f.txt")
    assert r.returncode != 0 and b"cannot copy directory" in r.stderr
    r = eng.docker("cp", str(work / "f.txt"), f"{running}:/tmp/nodir/")
    assert r.returncode != 0
    r = eng.docker("cp", str(work / "f.txt"), f"{running}:/nonexistent/x/y")
    assert r.returncode != 0 and b"Could not find the file /nonexistent/x" in r.stderr, r.stderr


def test_docker_cp_out_of_a_running_container_and_from_a_volume(eng: Engine, running: str, work: Path) -> None:
    sh(eng, running, "mkdir -p /tmp/out/sub && echo one > /tmp/out/1 && echo two > /tmp/out/sub/2")
    sh(eng, running, "ln -sf 1 /tmp/out/l")
    sh(eng, running, "echo in-volume > /data/v.txt")
    eng.ok("cp", f"{running}:/tmp/out/1", str(work / "one.txt"))
    eng.ok("cp", f"{running}:/tmp/out", str(work / "outdir"))
    (work / "existing").mkdir()
    eng.ok("cp", f"{running}:/tmp/out", str(work / "existing"))
    (work / "contents").mkdir()
    eng.ok("cp", f"{running}:/tmp/out/.", str(work / "contents"))
    eng.ok("cp", f"{running}:/data/v.txt", str(work))
    assert (work / "one.txt").read_text() == "one\n"
    assert (work / "outdir" / "sub" / "2").read_text() == "two\n"
    assert os.readlink(work / "outdir" / "l") == "1"
    assert (work / "existing" / "out" / "1").read_text() == "one\n"
    assert sorted(os.listdir(work / "contents")) == ["1", "l", "sub"]
    assert (work / "v.txt").read_text() == "in-volume\n"
    # -L: the link's target, under the link's name
    eng.ok("cp", "-L", f"{running}:/tmp/out/l", str(work / "followed"))
    assert (work / "followed").read_text() == "one\n" and not (work / "followed").is_symlink()
    # into a volume: written to the volume (seen by another container using it)
    (work / "tovol").write_text("to the volume\n")
    eng.ok("cp", str(work / "tovol"), f"{running}:/data/")
    assert eng.ok("run", "--rm", "-v", f"{running}-vol:/v", "busybox", "cat", "/v/tovol") == "to the volume\n"
    # a missing path: docker's words
    r = eng.docker("cp", f"{running}:/tmp/nope", str(work))
    assert r.returncode != 0 and f"Could not find the file /tmp/nope in container {running}".encode() in r.stderr


def test_docker_cp_with_a_stopped_container(eng: Engine, work: Path) -> None:
    name = f"cp-stopped-{uuid.uuid4().hex[:6]}"
    eng.ok("create", "--name", name, "busybox", "cat", "/etc/motd-from-cp", "/tmp/d/x")
    try:
        (work / "motd").write_text("copied before start\n")
        (work / "d").mkdir()
        (work / "d" / "x").write_text("X\n")
        eng.ok("cp", str(work / "motd"), f"{name}:/etc/motd-from-cp")
        eng.ok("cp", str(work / "d"), f"{name}:/tmp/")
        assert no_archive_mounts(eng) == []
        eng.ok("cp", f"{name}:/etc/motd-from-cp", str(work / "back"))
        assert (work / "back").read_text() == "copied before start\n"
        assert eng.ok("start", "-a", name) == "copied before start\nX\n"
        # exited now: copy out of and into it again
        eng.ok("cp", f"{name}:/tmp/d", str(work / "d2"))
        assert (work / "d2" / "x").read_text() == "X\n"
        eng.ok("cp", str(work / "motd"), f"{name}:/root/")
        assert eng.ok("cp", f"{name}:/root/motd", "-").count(b"copied before start".decode()) == 1
        assert no_archive_mounts(eng) == []
    finally:
        eng.docker("rm", "-f", name)
    assert no_archive_mounts(eng) == []


# -- the API: stat header, docker-py ---------------------------------------------------------
def test_head_stat_values(eng: Engine, running: str) -> None:
    sh(eng, running, "mkdir -p /tmp/st && printf 12345 > /tmp/st/f && chmod 640 /tmp/st/f")
    sh(eng, running, "ln -sf /tmp/st/f /tmp/st/l")
    sh(eng, running, "ln -sf ../../../../../../etc /tmp/st/up && touch -d '2021-03-04 05:06:07' /tmp/st/f")
    status, st, _ = stat_header(eng, running, "/tmp/st/f")
    assert status == 200 and st is not None
    assert st["name"] == "f" and st["size"] == 5 and st["mode"] == 0o640 and st["linkTarget"] == ""
    mtime = dt.datetime.fromisoformat(st["mtime"].replace("Z", "+00:00"))
    assert mtime.astimezone(dt.UTC).replace(tzinfo=None) == dt.datetime(2021, 3, 4, 5, 6, 7)
    status, st, _ = stat_header(eng, running, "/tmp/st")
    assert st is not None and st["mode"] & GO_MODE_DIR and st["mode"] & 0o777 == 0o755 and st["name"] == "st"
    status, st, _ = stat_header(eng, running, "/tmp/st/l")
    assert st is not None and st["mode"] & GO_MODE_SYMLINK and st["linkTarget"] == "/tmp/st/f"
    status, st, _ = stat_header(eng, running, "/tmp/st/up")  # a relative link climbing out: stays in the root
    assert st is not None and st["linkTarget"] == "/etc"
    status, st, _ = stat_header(eng, running, "/tmp/st/.")
    assert st is not None and st["name"] == "."
    status, st, body = stat_header(eng, running, "/tmp/st/missing")
    assert status == 404 and st is None
    status, _h, body = eng.api("GET", f"/containers/{running}/archive?path=/tmp/st/missing")
    assert status == 404
    assert json.loads(body)["message"] == f"Could not find the file /tmp/st/missing in container {running}"
    status, _h, body = eng.api("GET", f"/containers/{running}/archive")
    assert status == 400 and b"path" in body
    status, _h, body = eng.api("HEAD", "/containers/no-such-container/archive?path=/")
    assert status == 404


def test_docker_py_get_and_put_archive(eng: Engine, running: str) -> None:
    docker = pytest.importorskip("docker")
    client = docker.DockerClient(base_url=f"unix://{eng.sock}", timeout=60)
    try:
        c = client.containers.get(running)
        sh(eng, running, "mkdir -p /tmp/py/sub && echo py > /tmp/py/sub/f")
        bits, stat = c.get_archive("/tmp/py")
        data = b"".join(bits)
        assert stat["name"] == "py" and stat["mode"] & GO_MODE_DIR
        with tarfile.open(fileobj=io.BytesIO(data)) as t:
            names = sorted(m.name for m in t)
            content = t.extractfile("py/sub/f")
            assert content is not None and content.read() == b"py\n"
        assert names == ["py", "py/sub", "py/sub/f"]
        bits, _stat = c.get_archive("/tmp/py/.")
        with tarfile.open(fileobj=io.BytesIO(b"".join(bits))) as t:
            assert sorted(m.name for m in t) == [".", "./sub", "./sub/f"]
        assert c.put_archive("/tmp/py", tar_of(("new", "d", b""), ("new/file", "f", b"put by docker-py\n")))
        assert sh(eng, running, "cat /tmp/py/new/file") == "put by docker-py\n"
        # dockerd's events for a copy: archive-path (read) and extract-to-dir (write)
        until = int(dt.datetime.now(dt.UTC).timestamp()) + 1
        seen = {
            e["Action"]
            for e in client.events(since=0, until=until, decode=True, filters={"container": running})
            if e.get("Type") == "container"
        }
        assert {"archive-path", "extract-to-dir"} <= seen
        with pytest.raises(docker.errors.NotFound):
            c.put_archive("/tmp/not-there", tar_of(("x", "f", b"x")))
        with pytest.raises(docker.errors.APIError) as err:
            c.put_archive("/tmp/py/sub/f", tar_of(("x", "f", b"x")))
        assert "extraction point is not a directory" in str(err.value)
    finally:
        client.close()


# -- the root is never left -----------------------------------------------------------------------
def test_symlink_escape_stays_in_the_container(eng: Engine, running: str, work: Path) -> None:
    marker_dir = work / "host-side"
    marker_dir.mkdir()
    (marker_dir / "secret").write_text("host secret\n")
    sh(
        eng,
        running,
        f"mkdir -p /tmp/esc && ln -sf {marker_dir} /tmp/esc/abs && ln -sf ../../../../../../../../{marker_dir} "
        "/tmp/esc/rel && ln -sf / /tmp/esc/root",
    )
    # reading through a link to a host path reads the container's path, which does not exist
    for link in ("abs", "rel"):
        status, _h, _b = eng.api("GET", f"/containers/{running}/archive?path=/tmp/esc/{link}/secret")
        assert status == 404, link
    r = eng.docker("cp", f"{running}:/tmp/esc/root{marker_dir}/secret", str(work / "stolen"))
    assert r.returncode != 0 and not (work / "stolen").exists()
    # writing through them lands in the container, never on the host
    sh(eng, running, f"mkdir -p {marker_dir}")
    (work / "payload").write_text("payload\n")
    eng.ok("cp", str(work / "payload"), f"{running}:/tmp/esc/abs/")
    eng.ok("cp", str(work / "payload"), f"{running}:/tmp/esc/rel/p2")
    assert sorted(os.listdir(marker_dir)) == ["secret"]
    assert sh(eng, running, f"ls {marker_dir}") == "p2\npayload\n"


def test_tar_traversal_refused_or_contained(eng: Engine, running: str, work: Path) -> None:
    sh(eng, running, "mkdir -p /tmp/tt/dest && rm -f /tmp/tt/evil /evil-abs")

    def put(data: bytes) -> tuple[int, bytes]:
        status, _h, body = eng.api(
            "PUT", f"/containers/{running}/archive?path=/tmp/tt/dest", data, {"Content-Type": "application/x-tar"}
        )
        return status, body

    status, body = put(tar_of(("../evil", "f", b"x")))
    assert status == 400 and b"is outside of" in body
    status, body = put(tar_of(("a/../../../evil", "f", b"x")))
    assert status == 400
    status, body = put(tar_of(("up", "l", "../../../../")))
    assert status == 400 and b"invalid symlink" in body
    assert sh(eng, running, "ls /tmp/tt; ls /tmp/tt/dest") == "dest\n"
    # an absolute name stays under the destination
    status, body = put(tar_of(("/evil-abs", "f", b"abs\n")))
    assert status == 200, body
    assert sh(eng, running, "cat /tmp/tt/dest/evil-abs; ls /evil-abs 2>&1 || true").startswith("abs\n")
    # a link to / and a file through it: in the container's root, not the host's
    host_marker = f"/tmp/dy-cp-escape-{uuid.uuid4().hex[:8]}"
    status, body = put(tar_of(("root", "l", "/"), (f"root{host_marker}", "f", b"through a link\n")))
    assert status == 200, body
    assert not os.path.exists(host_marker)
    assert sh(eng, running, f"cat {host_marker}") == "through a link\n"
    # noOverwriteDirNonDir: a directory is not replaced by a file
    sh(eng, running, "mkdir -p /tmp/tt/dest/adir")
    status, _h, body = eng.api(
        "PUT", f"/containers/{running}/archive?path=/tmp/tt/dest&noOverwriteDirNonDir=1", tar_of(("adir", "f", b"x"))
    )
    assert status == 400 and b"cannot overwrite directory" in body
    status, body = put(b"this is not a tar archive" * 40)
    assert status == 400


def test_read_only_rootfs(eng: Engine, work: Path) -> None:
    name = f"cp-ro-{uuid.uuid4().hex[:6]}"
    eng.ok(
        "run", "-d", "--name", name, "--read-only", "-v", f"{name}-rw:/rw", "-v", f"{name}-ro:/ro:ro",
        "busybox", "sleep", "600",
    )  # fmt: skip
    try:
        (work / "f").write_text("f\n")
        r = eng.docker("cp", str(work / "f"), f"{name}:/tmp/")
        assert r.returncode != 0 and b"container rootfs is marked read-only" in r.stderr, r.stderr
        r = eng.docker("cp", str(work / "f"), f"{name}:/ro/")
        assert r.returncode != 0 and b"mounted volume is marked read-only" in r.stderr, r.stderr
        eng.ok("cp", str(work / "f"), f"{name}:/rw/")
        assert eng.ok("exec", name, "cat", "/rw/f") == "f\n"
        eng.ok("cp", f"{name}:/etc/hostname", str(work / "h"))  # reading is fine
    finally:
        eng.docker("rm", "-f", "-v", name)
        eng.docker("volume", "rm", f"{name}-rw", f"{name}-ro")


# -- dockyard cp ---------------------------------------------------------------------------------
def test_dockyard_cp_cli_forms(eng: Engine, running: str, work: Path) -> None:
    inst = eng.inst
    (work / "local.txt").write_text("from dockyard cp\n")
    (work / "ld").mkdir()
    (work / "ld" / "x").write_text("x\n")

    def cli(*args: str, input: bytes | None = None) -> bytes:
        r = inst.cli(*args, input=input)
        assert r.returncode == 0, r.stderr.decode()
        return r.stdout

    cli("cp", str(work / "local.txt"), f"{running}:/tmp/")
    cli("cp", str(work / "ld"), f"{running}:/tmp/dyd")
    cli("container", "cp", f"{work / 'ld'}/.", f"{running}:/tmp/")
    assert sh(eng, running, "cat /tmp/local.txt /tmp/dyd/x /tmp/x") == "from dockyard cp\nx\nx\n"
    cli("cp", f"{running}:/tmp/dyd", str(work / "back"))
    assert (work / "back" / "x").read_text() == "x\n"
    # - : a tar on stdin into a directory, a tar on stdout
    cli("cp", "-", f"{running}:/tmp/", input=tar_of(("stdin.txt", "f", b"from stdin\n")))
    assert sh(eng, running, "cat /tmp/stdin.txt") == "from stdin\n"
    out = cli("cp", f"{running}:/tmp/dyd", "-")
    with tarfile.open(fileobj=io.BytesIO(out)) as t:
        assert sorted(m.name for m in t) == ["dyd", "dyd/x"]
    # docker's refusals
    r = inst.cli("cp", str(work / "local.txt"), str(work / "other"))
    assert r.returncode != 0 and b"must specify at least one container source" in r.stderr
    r = inst.cli("cp", f"{running}:/tmp/x", f"{running}:/tmp/y")
    assert r.returncode != 0 and b"copying between containers is not supported" in r.stderr
    r = inst.cli("cp", f"{running}:/tmp/nothing-here", str(work))
    assert r.returncode != 0 and b"Could not find the file /tmp/nothing-here" in r.stderr
    r = inst.cli("cp", str(work / "ld"), f"{running}:/tmp/local.txt")
    assert r.returncode != 0 and b"cannot copy directory" in r.stderr

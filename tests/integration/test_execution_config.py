"""Container configuration (issue 5; CASES.md C15): users resolved safely inside the rootfs,
working directory, hostname, labels, --read-only, bind mounts, named and anonymous volumes,
tmpfs, --init."""

from __future__ import annotations

import io
import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import need_root
from tests.engine import Engine
from tests.harness import Instance

pytestmark = pytest.mark.root


def layer(
    files: dict[str, bytes] | None = None,
    executables: dict[str, bytes] | None = None,
    symlinks: dict[str, str] | None = None,
    whiteouts: list[str] | None = None,
    fifos: list[str] | None = None,
    dirs: list[str] | None = None,
) -> bytes:
    """An uncompressed layer tar with regular files, symlinks, whiteouts and FIFOs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in dirs or []:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in (files or {}).items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for name, data in (executables or {}).items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
        for name in whiteouts or []:
            head, tail = os.path.split(name)
            tar.addfile(tarfile.TarInfo(os.path.join(head, ".wh." + tail)))
        for name in fifos or []:
            info = tarfile.TarInfo(name)
            info.type = tarfile.FIFOTYPE
            tar.addfile(info)
    return buf.getvalue()


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    need_root()
    inst = Instance()
    try:
        e = Engine(inst)
        e.load("nopasswd:latest", config={"User": "1000:1000"}, layers=[layer(whiteouts=["etc/passwd", "etc/group"])])
        e.load("numeric:latest", config={"User": "1234"})
        e.load(
            "app:latest",
            config={"User": "app"},
            layers=[
                layer(
                    {
                        "etc/passwd": b"root:x:0:0::/root:/bin/sh\napp:x:1001:1002::/home/app:/bin/sh\n",
                        "etc/group": b"root:x:0:\napp:x:1002:\nextra:x:2000:app\n",
                    }
                )
            ],
        )
        e.load(
            "zero:latest",
            config={"User": "app"},
            layers=[layer(whiteouts=["etc/passwd"]), layer(symlinks={"etc/passwd": "/dev/zero"})],
        )
        e.load(
            "zerorel:latest",
            config={"User": "app"},
            layers=[layer(whiteouts=["etc/passwd"]), layer(symlinks={"etc/passwd": "../../../../dev/zero"})],
        )
        e.load(
            "fifo:latest", config={"User": "app"}, layers=[layer(whiteouts=["etc/passwd"]), layer(fifos=["etc/passwd"])]
        )
        e.load("withdata:latest", layers=[layer({"data/seed.txt": b"from the image\n"}, dirs=["data"])])
        yield e
    finally:
        inst.cleanup()


def test_numeric_user_without_passwd(engine: Engine) -> None:
    assert engine.run("--rm", "nopasswd", "id").stdout == b"uid=1000 gid=1000 groups=1000\n"  # dockerd since 20.10.18


def test_numeric_uid_not_in_passwd_gets_gid_0(engine: Engine) -> None:
    assert engine.run("--rm", "numeric", "id", "-u").stdout == b"1234\n"
    assert engine.run("--rm", "numeric", "id", "-g").stdout == b"0\n"


def test_named_user_with_supplementary_groups_and_home(engine: Engine) -> None:
    out = engine.run("--rm", "app", "sh", "-c", "id -u; id -g; id -G; echo $HOME").stdout.decode().split("\n")
    assert out[0] == "1001" and out[1] == "1002" and "2000" in out[2].split() and out[3] == "/home/app"
    assert engine.run("--rm", "-u", "app:extra", "app", "id", "-g").stdout == b"2000\n"


def test_unknown_user_fails_to_start(engine: Engine) -> None:
    p = engine.run("--rm", "-u", "ghost", "busybox", "true")
    # a user error, not Internal
    assert p.returncode == 125 and p.stderr.startswith(b"error: unable to find user ghost")


def test_unknown_user_records_what_docker_records(engine: Engine) -> None:
    """Docker 20.10 here: ``run -d -u nosuch`` prints the container's ID (once created), exits 125
    and leaves the container ``created`` with ExitCode 128 and the error, its FinishedAt unset."""
    p = engine.run("-d", "--name", "ghostly", "-u", "ghost", "busybox", "true")
    assert p.returncode == 125, p.stderr
    assert p.stdout.decode().strip() == engine.inspect("ghostly")["id"]
    state = engine.inspect("ghostly")["state"]
    assert (state["status"], state["exit_code"], state["started_at"], state["finished_at"]) == (
        "created",
        128,
        None,
        None,
    )
    assert state["error"].startswith("unable to find user ghost")
    assert engine.cli("rm", "ghostly").returncode == 0


@pytest.mark.parametrize("image", ["zero", "zerorel", "fifo"])
def test_hostile_passwd_fails_fast_without_reading_host_files(engine: Engine, image: str) -> None:
    t0 = time.monotonic()
    p = engine.run("--rm", image, "true")
    assert p.returncode == 125 and b"passwd" in p.stderr
    assert time.monotonic() - t0 < 10
    assert engine.cli("ps").returncode == 0  # the service is fine


def test_workdir_is_created_for_the_user(engine: Engine) -> None:
    p = engine.run("--rm", "-u", "1000", "-w", "/work/dir", "busybox", "sh", "-c", "pwd; stat -c %u:%g /work/dir")
    assert p.stdout == b"/work/dir\n1000:1000\n"


def test_hostname_and_labels(engine: Engine) -> None:
    assert engine.run("--rm", "--hostname", "myhost", "busybox", "sh", "-c", "hostname; cat /etc/hostname").stdout == (
        b"myhost\nmyhost\n"
    )
    cid = engine.cli("create", "-l", "team=a", "-l", "tier=web", "busybox", "true", check=True).stdout.decode().strip()
    assert engine.run("--rm", "busybox", "true").returncode == 0
    assert engine.inspect(cid)["labels"] == {"team": "a", "tier": "web"}
    ids = engine.cli("ps", "-a", "-q", "--no-trunc", "-f", "label=team=a").stdout.decode().split()
    assert ids == [cid]
    engine.run("--name", "dflt", "busybox", "hostname", check=True)
    assert engine.cli("logs", "dflt").stdout == engine.inspect("dflt")["id"][:12].encode() + b"\n"
    engine.cli("rm", cid, "dflt", check=True)


def test_read_only_rootfs_with_tmpfs(engine: Engine) -> None:
    p = engine.run(
        "--rm",
        "--read-only",
        "--tmpfs",
        "/scratch:size=1m",
        "busybox",
        "sh",
        "-c",
        "touch /x 2>/dev/null && echo wrote; touch /scratch/y && echo tmpfs; grep ' /scratch ' /proc/mounts",
    )
    out = p.stdout.decode()
    assert "wrote" not in out and "tmpfs\n" in out and "size=1024k" in out


def test_bind_mounts_rw_and_ro(engine: Engine, tmp_path: Path) -> None:
    host = tmp_path / "shared"
    host.mkdir()
    (host / "in.txt").write_text("from host\n")
    p = engine.run("--rm", "-v", f"{host}:/data", "busybox", "sh", "-c", "cat /data/in.txt; echo out > /data/out.txt")
    assert p.stdout == b"from host\n" and (host / "out.txt").read_text() == "out\n"
    p = engine.run("--rm", "-v", f"{host}:/data:ro", "busybox", "sh", "-c", "echo x > /data/y")
    assert p.returncode != 0 and b"Read-only" in p.stderr
    missing = tmp_path / "made" / "by" / "v"
    assert engine.run("--rm", "-v", f"{missing}:/m", "busybox", "true").returncode == 0
    assert missing.is_dir()  # -v creates a missing host directory, as docker does


def test_named_volume_persists_and_cannot_be_removed_in_use(engine: Engine) -> None:
    assert engine.run("--rm", "-v", "vol1:/data", "busybox", "sh", "-c", "echo kept > /data/f").returncode == 0
    assert engine.run("--rm", "-v", "vol1:/data", "busybox", "cat", "/data/f").stdout == b"kept\n"
    assert "vol1" in engine.cli("volume", "ls", "-q").stdout.decode().split()
    engine.run("-d", "--name", "uses", "-v", "vol1:/data", "busybox", "sleep", "100", check=True)
    p = engine.cli("volume", "rm", "vol1")
    assert p.returncode != 0 and b"in use" in p.stderr
    engine.cli("rm", "-f", "uses", check=True)
    assert engine.cli("volume", "rm", "vol1").returncode == 0
    assert "vol1" not in engine.cli("volume", "ls", "-q").stdout.decode().split()


def test_new_volume_is_filled_from_the_image(engine: Engine) -> None:
    assert engine.run("--rm", "-v", "seeded:/data", "withdata", "cat", "/data/seed.txt").stdout == b"from the image\n"
    engine.cli("volume", "rm", "seeded", check=True)


def test_anonymous_volumes_go_with_rm_v_and_with_rm(engine: Engine) -> None:
    before = set(engine.cli("volume", "ls", "-q").stdout.decode().split())
    engine.run("--name", "anon", "-v", "/anon", "busybox", "sh", "-c", "echo x > /anon/f", check=True)
    created = set(engine.cli("volume", "ls", "-q").stdout.decode().split()) - before
    assert len(created) == 1
    engine.cli("rm", "-v", "anon", check=True)
    assert set(engine.cli("volume", "ls", "-q").stdout.decode().split()) == before
    engine.run("--rm", "-v", "/anon2", "busybox", "true", check=True)
    assert set(engine.cli("volume", "ls", "-q").stdout.decode().split()) == before


def test_init_is_pid1_and_reaps_zombies(engine: Engine) -> None:
    p = engine.run("--rm", "--init", "busybox", "sh", "-c", "(sleep 0.1 &); sleep 1; ps -o pid,stat,comm")
    out = p.stdout.decode()
    assert "docker-init" in out.splitlines()[1] or "init" in out
    assert not [line for line in out.splitlines()[1:] if line.split()[1].startswith("Z")]


def test_non_executable_script_and_missing_interpreter_are_126(engine: Engine) -> None:
    """CASES.md C20: found but not executable (mode 0644, or its interpreter is missing) -> 126."""
    engine.load(
        "scripts:latest",
        layers=[layer({"noexec.sh": b"#!/bin/sh\necho hi\n"}, executables={"nointerp.sh": b"#!/nointerp\necho hi\n"})],
    )
    p = engine.run("--rm", "scripts", "/noexec.sh")
    assert p.returncode == 126
    p = engine.run("--rm", "scripts", "/nointerp.sh")
    assert p.returncode == 126 and b"/nointerp" in p.stderr

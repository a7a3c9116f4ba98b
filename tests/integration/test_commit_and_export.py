"""``dockyard commit`` and ``dockyard export`` end to end (issue 4, point 3).

A container deletes, replaces and creates files (a whole directory too); its commit
is saved, removed, loaded again and run: the new container sees exactly the changed
tree. ``export`` gives the merged tree as one tar.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from tests.harness import Instance

CHANGES = (
    "rm /bin/vi && rm -r /home/user && echo new > /etc/added && echo v2 > /etc/group "
    "&& mkdir -p /srv/data && echo deep > /srv/data/f && ln -s /srv/data/f /srv/link"
)
LISTING = (
    "ls -a /home /srv /srv/data; test -e /bin/vi && echo vi-present || echo vi-gone; "
    "cat /etc/added /etc/group /srv/link; readlink /srv/link"
)


def test_commit_save_rmi_load_run_sees_exactly_the_changed_tree(dy: Instance) -> None:
    dy.cli("run", "--name", "changer", "busybox", "sh", "-c", CHANGES, check=True)
    expected = dy.cli("run", "--rm", "busybox", "sh", "-c", CHANGES + " && " + LISTING, check=True).stdout
    r = dy.cli(
        "commit", "-m", "my change", "-a", "tester", "-c", "ENV COMMITTED=yes", "changer", "changed:v1", check=True
    )
    image_id = r.stdout.decode().strip()
    assert image_id.startswith("sha256:")
    info = json.loads(dy.cli("image", "inspect", "changed:v1", check=True).stdout)[0]
    assert len(info["RootFS"]["Layers"]) == 2 and "COMMITTED=yes" in info["Config"]["Env"]
    assert info["Config"]["Cmd"] == ["sh", "-c", CHANGES]  # the container's command becomes the image's
    archive = Path(dy.base) / "changed.tar"
    dy.cli("save", "-o", str(archive), "changed:v1", check=True)
    dy.cli("rm", "changer", check=True)
    dy.cli("rmi", "changed:v1", check=True)
    assert b"changed" not in dy.cli("images", check=True).stdout
    dy.cli("load", "-i", str(archive), check=True)
    seen = dy.cli("run", "--rm", "changed:v1", "sh", "-c", LISTING, check=True).stdout
    assert seen == expected
    assert b"vi-gone" in seen and b"user" not in seen.split(b"/srv")[0]
    env = dy.cli("run", "--rm", "changed:v1", "env", check=True).stdout
    assert b"COMMITTED=yes" in env


def test_commit_of_a_running_container_and_a_dangling_result(dy: Instance) -> None:
    dy.cli("run", "-d", "--name", "live", "busybox", "sh", "-c", "echo x > /x; sleep 600", check=True)
    for _ in range(50):
        if dy.cli("exec", "live", "cat", "/x").stdout == b"x\n":
            break
    image_id = dy.cli("commit", "live", check=True).stdout.decode().strip()
    assert dy.cli("inspect", "live", check=True).returncode == 0
    state = json.loads(dy.cli("inspect", "live", check=True).stdout)[0]["State"]
    assert state["Running"] is True and state["Paused"] is False  # paused for the commit, then resumed
    assert dy.cli("run", "--rm", image_id, "cat", "/x", check=True).stdout == b"x\n"
    bad = dy.cli("commit", "nosuch", "x:y")
    assert bad.returncode != 0 and bad.stderr.startswith(b"error: ") and b"nosuch" in bad.stderr
    dy.cli("rm", "-f", "live", check=True)


def test_export_is_the_merged_tree(dy: Instance) -> None:
    dy.cli("run", "--name", "ex", "busybox", "sh", "-c", "rm /etc/passwd; echo hi > /hello", check=True)
    out = Path(dy.base) / "ex.tar"
    dy.cli("export", "-o", str(out), "ex", check=True)
    with tarfile.open(out) as tar:
        names = {m.name.lstrip("./") for m in tar.getmembers()}
        hello = tar.extractfile("hello" if "hello" in tar.getnames() else "./hello")
        assert hello is not None and hello.read() == b"hi\n"
    assert "bin/busybox" in names and "etc/group" in names
    assert "etc/passwd" not in names and not any(".wh." in n for n in names)
    piped = dy.cli("export", "ex", check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(piped)) as tar:
        assert {m.name.lstrip("./") for m in tar.getmembers()} == names

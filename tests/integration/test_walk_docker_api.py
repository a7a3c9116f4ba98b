"""Regression tests from a walk through the less-travelled Docker API surface, driven by the
Docker SDK for Python and the docker CLI against a private instance (``tests.gateway_util``).

Each test is named after what broke.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.gateway_util import Engine, docker_py
from tests.registry import Registry

docker = pytest.importorskip("docker")


@pytest.fixture
def client(eng: Engine) -> Iterator[Any]:
    with docker_py(eng) as c:
        yield c


def test_ps_ancestor_filter_matches_every_name_of_the_image(client: Any, eng: Engine) -> None:
    """``ancestor=busybox:latest`` (or the full name, or the id) matched nothing for a container
    created as ``busybox``: the filter compared strings instead of resolving the image."""
    c = client.containers.run("busybox", ["sleep", "300"], detach=True, name="walk-anc")
    try:
        image_id = client.images.get("busybox").id
        for value in ("busybox", "busybox:latest", "docker.io/library/busybox:latest", image_id, image_id[7:19]):
            names = [x.name for x in client.containers.list(filters={"ancestor": value})]
            assert names == ["walk-anc"], value
        assert client.containers.list(filters={"ancestor": "no-such-image:1"}) == []
        out = eng.ok("ps", "--filter", "ancestor=busybox:latest", "--format", "{{.Names}}")
        assert out.split() == ["walk-anc"]
    finally:
        c.remove(force=True)


def test_volume_prune_keeps_named_volumes_unless_all(client: Any, eng: Engine) -> None:
    """``docker volume prune`` (API 1.42+) removed named volumes, and ignored its label filters:
    data loss. Only unused anonymous volumes go unless ``all=true``; an older client keeps
    the old prune-everything meaning."""
    for name in ("walk-named", "walk-keep", "walk-old"):
        client.volumes.create(name, labels={"keep": "1"} if name == "walk-keep" else {})
    anon = client.volumes.create().name
    used = client.volumes.create("walk-used")
    holder = client.containers.create("busybox", ["true"], volumes=["walk-used:/data"])
    try:
        assert client.volumes.prune()["VolumesDeleted"] == [anon]
        names = {v.name for v in client.volumes.list()}
        assert {"walk-named", "walk-keep", "walk-old", "walk-used"} <= names and anon not in names

        out = eng.ok("volume", "prune", "-a", "-f", "--filter", "label!=keep")
        assert "walk-named" in out and "walk-old" in out and "walk-keep" not in out
        assert client.volumes.prune(filters={"all": True, "label": ["keep=1"]})["VolumesDeleted"] == ["walk-keep"]
        assert [v.name for v in client.volumes.list()] == ["walk-used"]  # a container uses it

        client.volumes.create("walk-old")
        status, _h, _b = eng.api("POST", "/v1.41/volumes/prune")
        assert status == 200 and "walk-old" not in {v.name for v in client.volumes.list()}
    finally:
        holder.remove(force=True)
        used.remove()


def test_commit_applies_the_config_of_its_body(client: Any) -> None:
    """``container.commit(conf={...})`` (the body of ``POST /commit``) was ignored: the new
    image had the container's labels, command and env only. The body is the image's config,
    its empty fields filled from the container's (as moby merges them), then ``changes``."""
    c = client.containers.run("busybox", ["sleep", "300"], detach=True, labels={"team": "x"}, environment={"A": "1"})
    try:
        conf = {"Labels": {"a": "b"}, "Env": ["B=2"], "Cmd": ["sh", "-c", "echo $A$B$C; pwd"], "WorkingDir": "/tmp"}
        img = c.commit("walk-commit", "1", conf=conf, changes=["ENV C=3"])
        cfg = img.attrs["Config"]
        assert cfg["Labels"] == {"team": "x", "a": "b"}
        assert {"A=1", "B=2", "C=3"} <= set(cfg["Env"]) and any(e.startswith("PATH=") for e in cfg["Env"])
        assert cfg["WorkingDir"] == "/tmp"
        assert client.containers.run("walk-commit:1", remove=True) == b"123\n/tmp\n"
        assert [i.tags for i in client.images.list(filters={"label": "a=b"})] == [["walk-commit:1"]]

        plain = c.commit("walk-commit", "2")  # no body: the container's own config
        assert plain.attrs["Config"]["Cmd"] == ["sleep", "300"] and plain.attrs["Config"]["Labels"] == {"team": "x"}
    finally:
        c.remove(force=True)
        for tag in ("walk-commit:1", "walk-commit:2"):
            client.images.remove(tag)


def test_docker_system_prune_completes(client: Any, eng: Engine) -> None:
    """``docker system prune -f`` failed with ``method POST not allowed on /networks/prune``
    (then ``page not found`` for ``/build/prune``) after it had already removed the stopped
    containers: networks and the build cache are pruned as nothing, so the command completes."""
    stopped = client.containers.run("busybox", ["true"], detach=True, name="walk-prune-me")
    stopped.wait(timeout=30)
    client.volumes.create("walk-prune-named")
    try:
        r = eng.docker("system", "prune", "-f", "--volumes")
        assert r.returncode == 0, r.stderr.decode()
        assert stopped.id in r.stdout.decode()
        assert "walk-prune-named" in {v.name for v in client.volumes.list()}  # named: kept without -a
        assert client.api.prune_networks() == {"NetworksDeleted": None}
        assert eng.json("POST", "/v1.45/build/prune") == {"CachesDeleted": None, "SpaceReclaimed": 0}
    finally:
        client.volumes.get("walk-prune-named").remove()


def test_container_sizes_are_measured(client: Any, eng: Engine) -> None:
    """``docker ps -s``, ``inspect --size`` and ``system df`` showed 0 B (or nothing) for a
    container that had written 300 KiB: SizeRw is its writable snapshot's usage, SizeRootFs
    that plus its image's size."""
    c = client.containers.run(
        "busybox", ["sh", "-c", "dd if=/dev/zero of=/big bs=1k count=300 2>/dev/null; sleep 300"], detach=True
    )
    try:
        eng.ok("exec", c.id, "sh", "-c", "while [ ! -s /big ] || [ $(wc -c < /big) -lt 307200 ]; do sleep 0.1; done")
        image_size = client.images.get("busybox").attrs["Size"]
        inspected = eng.json("GET", f"/v1.45/containers/{c.id}/json?size=1")
        assert 300 * 1024 <= inspected["SizeRw"] < 400 * 1024
        assert inspected["SizeRootFs"] == inspected["SizeRw"] + image_size
        assert "SizeRw" not in client.api.inspect_container(c.id)  # only when asked, as Docker
        (listed,) = [x for x in client.api.containers(size=True) if x["Id"] == c.id]
        assert listed["SizeRw"] == inspected["SizeRw"]
        (in_df,) = [x for x in client.df()["Containers"] if x["Id"] == c.id]
        assert in_df["SizeRw"] == inspected["SizeRw"]
        assert "kB (virtual" in eng.ok("ps", "-s", "--filter", f"id={c.id}", "--format", "{{.Size}}")
    finally:
        c.remove(force=True)


def test_system_df_computes_shared_size(client: Any, eng: Engine) -> None:
    """``system df`` answered ``SharedSize: -1`` ("not computed") for every image, so the docker
    CLI counted an image in use as 100 % reclaimable. SharedSize is the bytes of the layers
    another image also has."""
    c = client.containers.run("busybox", ["sleep", "300"], detach=True)
    try:
        base = client.images.get("busybox")
        derived = c.commit("walk-derived", "1", changes=["ENV X=1"])  # same layers plus one
        by_id = {i["Id"]: i for i in client.df()["Images"]}
        base_size = by_id[base.id]["Size"]
        assert by_id[base.id]["SharedSize"] == base_size
        # its own layer is empty (the container changed nothing): 0 bytes unpacked, as Docker counts it
        assert by_id[derived.id]["SharedSize"] == base_size == by_id[derived.id]["Size"]
        client.images.remove("walk-derived:1")
        (only,) = client.df()["Images"]
        assert only["SharedSize"] == 0 and only["Containers"] == 1
        table = eng.ok("system", "df", "--format", "{{.Type}} {{.Reclaimable}}")
        assert "Images 0B (0%)" in table
    finally:
        c.remove(force=True)


def test_push_without_a_tag_pushes_every_tag_of_the_repository(client: Any) -> None:
    """``images.push(repo)`` (no tag: Docker pushes all the repository's tags) answered 404
    ``No such image: repo``. Each local tag is pushed in one stream; a repository with no
    tag here is Docker's 404."""
    with Registry() as reg:
        repo = f"{reg.host}/walk/all"
        busybox = client.images.get("busybox")
        for tag in ("t1", "t2"):
            busybox.tag(repo, tag)
        try:
            lines = list(client.images.push(repo, stream=True, decode=True))
            assert not [line for line in lines if "error" in line], lines
            assert [line["aux"]["Tag"] for line in lines if "aux" in line] == ["t1", "t2"]
            for tag in ("t1", "t2"):
                client.images.remove(f"{repo}:{tag}")
                assert client.images.pull(repo, tag=tag).id == busybox.id  # it is in the registry
            with pytest.raises(docker.errors.NotFound, match="does not exist locally"):
                client.images.push(f"{reg.host}/walk/none")
        finally:
            for tag in ("t1", "t2"):
                with contextlib.suppress(docker.errors.NotFound):
                    client.images.remove(f"{repo}:{tag}")

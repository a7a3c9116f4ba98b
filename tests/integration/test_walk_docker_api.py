"""Regression tests from a walk through the less-travelled Docker API surface, driven by the
Docker SDK for Python and the docker CLI against a private instance (``tests.gateway_util``).

Each test is named after what broke.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import need_root
from tests.gateway_util import Engine, engine

docker = pytest.importorskip("docker")


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

"""What a create that Dockyard cannot honour as asked answers, through the CLI and the docker CLI.

One instance (``dockyard up``, busybox loaded) serves the module. Regressions:
``run --cpus -1`` answered with pydantic's words about ``resources.nano_cpus`` (now
dockerd's ``Range of CPUs ...``, from the CLI and the Docker API alike).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from common import resources
from tests.conftest import need_root
from tests.gateway_util import Engine, engine


@pytest.fixture(scope="module")
def eng() -> Iterator[Engine]:
    need_root()
    with engine() as e:
        yield e


def _cpu_range() -> str:
    n = resources.cpu_count()
    return f"Range of CPUs is from 0.01 to {n}.00, as there are only {n} CPUs available"


def test_bad_resources_are_refused_with_dockerds_message(eng: Engine) -> None:
    r = eng.inst.cli("run", "--rm", "--cpus", "-1", "busybox", "true")
    assert (r.returncode, r.stderr.decode()) == (125, f"error: {_cpu_range()}\n")
    r = eng.inst.cli("create", "-m", "-1", "busybox")
    assert (r.returncode, r.stderr.decode()) == (
        125,
        'error: invalid argument "-1" for "-m, --memory" flag: invalid size: \'-1\'\n',
    )
    r = eng.inst.cli("run", "--rm", "-m", "1k", "busybox", "true")
    assert (r.returncode, r.stderr.decode()) == (125, "error: Minimum memory limit allowed is 6MB\n")

    for host, message in (
        ({"NanoCpus": -1}, _cpu_range()),
        ({"Memory": 4096}, "Minimum memory limit allowed is 6MB"),
        (
            {"Memory": 64 << 20, "MemorySwap": 32 << 20},
            "Minimum memoryswap limit should be larger than memory limit, see usage",
        ),
    ):
        status, _h, data = eng.api("POST", "/containers/create", {"Image": "busybox", "HostConfig": host})
        assert (status, json.loads(data)["message"]) == (400, message)
    assert eng.leftovers() == []

    cid = eng.json("POST", "/containers/create", {"Image": "busybox"})["Id"]
    status, _h, data = eng.api("POST", f"/containers/{cid}/update", {"NanoCpus": -5})
    assert (status, json.loads(data)["message"]) == (400, _cpu_range())
    r = eng.inst.cli("update", "--cpus", "-2", cid)
    assert (r.returncode, r.stderr.decode()) == (125, f"error: {_cpu_range()}\n")
    eng.json("DELETE", f"/containers/{cid}")

    if eng.cli is not None:
        r = eng.docker("run", "--rm", "--cpus", "-1", "busybox", "true")
        assert r.returncode == 125
        assert _cpu_range() in r.stderr.decode()
    assert eng.leftovers() == []

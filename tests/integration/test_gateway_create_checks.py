"""What a create that Dockyard cannot honour as asked answers, through the CLI and the docker CLI.

One instance (``dockyard up``, busybox loaded) serves the module. Regressions:
``run --cpus -1`` answered with pydantic's words about ``resources.nano_cpus`` (now
dockerd's ``Range of CPUs ...``, from the CLI and the Docker API alike);
``docker run -d -p 18080:80`` succeeded silently with no port published, ``--network bridge``
silently meant loopback only, and ``docker network ls`` answered ``page not found``.
"""

from __future__ import annotations

import json

from common import resources
from tests.gateway_util import Engine


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


_NO_PORTS = (
    "Published ports are discarded: Dockyard does not publish ports (0.0.0.0:18080->80/tcp); "
    "the container has network mode none (loopback only), use --network host to serve on the host's ports"
)
_NO_BRIDGE = (
    "Dockyard has no bridge network: the container gets network mode none "
    "(its own network namespace, loopback only); use --network host for the host's network"
)


def test_published_ports_and_bridge_are_warned_about(eng: Engine) -> None:
    body = {"Image": "busybox", "HostConfig": {"PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "18080"}]}}}
    reply = eng.json("POST", "/containers/create", body)
    assert reply["Warnings"] == [_NO_PORTS]
    eng.json("DELETE", f"/containers/{reply['Id']}")
    body = {"Image": "busybox", "HostConfig": {"NetworkMode": "host", "PublishAllPorts": True}}
    reply = eng.json("POST", "/containers/create", body)
    assert reply["Warnings"] == ["Published ports are discarded when using host network mode"]
    eng.json("DELETE", f"/containers/{reply['Id']}")
    reply = eng.json("POST", "/containers/create", {"Image": "busybox", "HostConfig": {"NetworkMode": "default"}})
    assert reply["Warnings"] == []  # what docker run sends without --network: nothing to warn about
    eng.json("DELETE", f"/containers/{reply['Id']}")

    r = eng.inst.cli("run", "--rm", "--network", "bridge", "busybox", "cat", "/proc/net/dev")
    assert r.returncode == 0, r.stderr
    assert r.stderr.decode() == f"warning: {_NO_BRIDGE}\n"
    assert [ln.split(":")[0].strip() for ln in r.stdout.decode().splitlines()[2:]] == ["lo"]

    if eng.cli is None:
        return
    r = eng.docker("run", "--rm", "-p", "18080:80", "busybox", "true")
    assert r.returncode == 0, r.stderr
    assert f"WARNING: {_NO_PORTS}" in r.stderr.decode()
    r = eng.docker("run", "--rm", "--network", "bridge", "busybox", "true")
    assert (r.returncode, r.stderr.decode()) == (0, f"WARNING: {_NO_BRIDGE}\n")
    assert eng.leftovers() == []


def test_network_ls_lists_the_networks_a_container_can_use(eng: Engine) -> None:
    nets = eng.json("GET", "/networks")
    assert sorted((n["Name"], n["Driver"], n["Scope"]) for n in nets) == [
        ("host", "host", "local"),
        ("none", "null", "local"),
    ]
    assert eng.json("GET", '/networks?filters={"driver":["host"]}')[0]["Name"] == "host"
    none = eng.json("GET", "/networks/none")
    assert eng.json("GET", f"/networks/{none['Id'][:12]}")["Name"] == "none"
    status, _h, data = eng.api("GET", "/networks/bridge")
    assert (status, json.loads(data)["message"]) == (404, "network bridge not found")

    if eng.cli is None:
        return
    rows = [ln.split() for ln in eng.ok("network", "ls").splitlines()]
    assert rows[0] == ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"]
    assert sorted(r[1:] for r in rows[1:]) == [["host", "host", "local"], ["none", "null", "local"]]
    cid = eng.ok("create", "busybox").strip()
    networks = json.loads(eng.ok("inspect", cid))[0]["NetworkSettings"]["Networks"]
    assert networks["none"]["NetworkID"] == none["Id"]
    eng.ok("rm", cid)


def test_network_create_rm_connect_say_what_dockyard_offers(eng: Engine) -> None:
    """A compose project creates its network first: it used to stop at ``page not found``."""
    status, _h, data = eng.api("POST", "/networks/create", {"Name": "proj_default", "Driver": "bridge"})
    assert status == 501
    assert json.loads(data)["message"] == (
        "cannot create network proj_default: Dockyard creates no networks; a container uses "
        "'none' or 'host' (docker run --network)"
    )
    status, _h, data = eng.api("DELETE", "/networks/host")
    assert (status, json.loads(data)["message"]) == (403, "host is a pre-defined network and cannot be removed")
    status, _h, data = eng.api("DELETE", "/networks/proj_default")
    assert (status, json.loads(data)["message"]) == (404, "network proj_default not found")
    status, _h, data = eng.api("POST", "/networks/none/connect", {"Container": "x"})
    assert status == 501 and "cannot connect to network none" in json.loads(data)["message"]
    assert eng.json("POST", "/networks/prune") == {"NetworksDeleted": None}
    assert sorted(n["Name"] for n in eng.json("GET", "/networks")) == ["host", "none"]

    if eng.cli is None:
        return
    r = eng.docker("network", "create", "proj_default")
    assert r.returncode == 1
    assert "cannot create network proj_default: Dockyard creates no networks" in r.stderr.decode()
    r = eng.docker("network", "rm", "none")
    assert r.returncode == 1 and "none is a pre-defined network and cannot be removed" in r.stderr.decode()
    r = eng.docker("network", "prune", "-f")
    assert r.returncode == 0, r.stderr

"""``common.networks``: how published ports and Docker's network modes are described to the user."""

from __future__ import annotations

from common import networks


def test_published_ports_read_as_docker_ps_shows_them() -> None:
    bindings = {
        "80/tcp": [{"HostIp": "", "HostPort": "18080"}, {"HostIp": "127.0.0.1", "HostPort": "8080"}],
        "53/udp": [{"HostIp": "", "HostPort": ""}],
        "443": None,
    }
    assert networks.published_ports(bindings) == [
        "0.0.0.0:18080->80/tcp",
        "127.0.0.1:8080->80/tcp",
        "0.0.0.0::53/udp",
        "443/tcp",
    ]


def test_create_warnings() -> None:
    assert networks.create_warnings("default") == []
    assert networks.create_warnings("none", {}) == []
    assert networks.create_warnings("host", {"80/tcp": [{"HostPort": "80"}]}) == [
        "Published ports are discarded when using host network mode"
    ]
    bridge, ports = networks.create_warnings("bridge", None, publish_all=True)
    assert "no bridge network" in bridge
    assert "(all exposed ports (-P))" in ports
    assert networks.effective_mode("bridge") == "none" and networks.effective_mode("host") == "host"


def test_network_ids_are_stable_and_distinct() -> None:
    assert networks.network_id("none") == networks.network_id("none") != networks.network_id("host")
    assert networks.docker_network("host")["Driver"] == "host"

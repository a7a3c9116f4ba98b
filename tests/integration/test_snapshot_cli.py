"""``dockyard snapshot ls | usage | info | rm`` against a running snapshot service."""

from __future__ import annotations

import json
import os

import pytest

from cli.snapshots import human_size
from deploy import mkimage
from tests.conftest import need_root
from tests.harness import Instance
from tests.snapshot_util import Layer, store_layer


@pytest.fixture
def chain(instance: Instance) -> list[str]:
    need_root()
    instance.start("snapshot")
    blobs = os.path.join(instance.base, "blobs")
    os.makedirs(blobs)
    layers = [store_layer(blobs, raw) for raw in (mkimage.busybox_rootfs_tar(), Layer().file("f", "x" * 5000).raw())]
    with instance.client("snapshot", timeout_s=60) as c:
        chain_ids: list[str] = c.call("snapshot.unpack", {"layers": layers})["chain_ids"]
        c.call("snapshot.prepare", {"key": "web", "parent": chain_ids[1], "labels": {"team": "web"}})
    return chain_ids


def test_ls_lists_keys_parents_and_kinds(instance: Instance, chain: list[str]) -> None:
    out = instance.cli("snapshot", "ls", check=True).stdout.decode().splitlines()
    assert out[0].split() == ["KEY", "PARENT", "KIND"]
    rows = sorted(line.split() for line in out[1:])
    assert rows == sorted([[chain[0], "committed"], [chain[1], chain[0], "committed"], ["web", chain[1], "active"]])
    quiet = instance.cli("snapshot", "ls", "-q", "-f", "kind==active", check=True).stdout.decode().split()
    assert quiet == ["web"]
    listed = json.loads(instance.cli("snapshot", "ls", "--json", "-f", "labels.team==web", check=True).stdout)
    assert [s["name"] for s in listed] == ["web"] and listed[0]["labels"] == {"team": "web"}


def test_usage_shows_size_and_inodes(instance: Instance, chain: list[str]) -> None:
    out = instance.cli("snapshot", "usage", "-b", chain[1], check=True).stdout.decode().splitlines()
    assert out[0].split() == ["KEY", "SIZE", "INODES"]
    key, size, inodes = out[1].split()
    assert key == chain[1] and int(size) >= 8192 and int(inodes) == 2  # the layer's root and f
    everything = instance.cli("snapshot", "usage", check=True).stdout.decode()
    assert "MiB" in everything and "web" in everything
    assert human_size(1536) == "1.5 KiB" and human_size(10) == "10 B"


def test_rm_refuses_a_parent_and_removes_leaves(instance: Instance, chain: list[str]) -> None:
    proc = instance.cli("snapshot", "rm", chain[1], "nope")
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert f"snapshot '{chain[1]}' has 1 child snapshot ('web')" in err and "snapshot 'nope' not found" in err
    assert "Traceback" not in err
    assert instance.cli("snapshot", "rm", "web", chain[1], check=True).stdout.decode().split() == ["web", chain[1]]
    info = json.loads(instance.cli("snapshot", "info", chain[0], check=True).stdout)
    assert info["kind"] == "committed" and info["name"] == chain[0]


def test_commands_fail_with_one_line_when_the_service_is_down(instance: Instance) -> None:
    proc = instance.cli("snapshot", "ls", timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.decode().startswith("error: Unavailable: snapshot service not answering")

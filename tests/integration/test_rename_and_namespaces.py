"""Renaming containers and listing namespaces, through the docker CLI and the native API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.gateway_util import Engine, busybox_archive
from tests.harness import PROJECT


def test_docker_rename_changes_the_name_and_refuses_a_taken_one(eng: Engine) -> None:
    head = eng.json("GET", "/dockyard/v1/events/head")["seq"]
    eng.ok("run", "-d", "--name", "first", "busybox", "sleep", "60")
    eng.ok("run", "-d", "--name", "second", "busybox", "sleep", "60")
    eng.ok("rename", "first", "renamed")
    names = eng.ok("ps", "--format", "{{.Names}}").split()
    assert sorted(names) == ["renamed", "second"]
    clash = eng.docker("rename", "renamed", "second")
    assert clash.returncode != 0 and b"already in use" in clash.stderr
    assert sorted(eng.ok("ps", "--format", "{{.Names}}").split()) == ["renamed", "second"]
    status, _h, body = eng.api("POST", "/containers/renamed/rename?name=bad%20name")
    assert status == 400 and b"invalid container name" in body
    status, _h, _b = eng.api("POST", "/containers/nosuch/rename?name=x1")
    assert status == 404
    status, _h, body = eng.api("GET", f"/dockyard/v1/events?since={head}&topic=/containers/update")
    assert status == 200
    events = [json.loads(line) for line in body.splitlines() if line.strip()]
    renames = [e["event"] for e in events if e["event"].get("action") == "rename"]
    assert [(r["old_name"], r["name"]) for r in renames] == [("first", "renamed")]
    eng.ok("rm", "-f", "renamed", "second")


def test_native_api_lists_every_namespace_in_use(eng: Engine) -> None:
    inst = eng.inst
    other = {**inst.env, "DOCKYARD_NAMESPACE": "team-a"}
    tar = busybox_archive(Path(inst.base) / "busybox-team-a.tar")
    subprocess.run(
        [sys.executable, "-m", "cli", "load", "-i", str(tar)], env=other, cwd=PROJECT, check=True, capture_output=True
    )
    subprocess.run(
        [sys.executable, "-m", "cli", "run", "-d", "--name", "a1", "busybox", "sleep", "60"],
        env=other,
        cwd=PROJECT,
        check=True,
        capture_output=True,
    )
    listing = eng.json("GET", "/dockyard/v1/namespaces")
    assert {"default", "team-a"} <= set(listing["namespaces"])
    containers = eng.json("GET", "/dockyard/v1/namespaces/team-a/containers")
    text = json.dumps(containers)
    assert "a1" in text
    assert "a1" not in eng.ok("ps", "-a", "--format", "{{.Names}}").split()  # Docker's API is the default namespace
    subprocess.run(
        [sys.executable, "-m", "cli", "rm", "-f", "a1"], env=other, cwd=PROJECT, check=True, capture_output=True
    )


def test_docker_commit_through_the_api(eng: Engine) -> None:
    eng.ok("run", "--name", "tocommit", "busybox", "sh", "-c", "echo committed > /marker")
    image_id = eng.ok("commit", "-m", "via docker", "-c", "ENV VIA=docker", "tocommit", "viadocker:1").strip()
    assert image_id.startswith("sha256:")
    assert eng.ok("run", "--rm", "viadocker:1", "cat", "/marker") == "committed\n"
    info = json.loads(eng.ok("image", "inspect", "viadocker:1"))[0]
    assert "VIA=docker" in info["Config"]["Env"] and len(info["RootFS"]["Layers"]) == 2
    assert eng.docker("commit", "nosuch", "x:1").returncode != 0
    eng.ok("rm", "tocommit")
    eng.ok("rmi", "viadocker:1")

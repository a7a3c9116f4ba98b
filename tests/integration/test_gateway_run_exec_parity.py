"""Through the gateway with the real docker CLI, three things a docker user saw differ from dockerd:

- ``id`` in ``docker run``/``docker exec`` said ``uid=65534(nobody) gid=65534(nogroup)``, dockerd's
  ``... groups=65534(nogroup)``: dockerd's getUser puts the primary gid first among the additional
  gids (CVE-2022-36109), the shim left it out.
- ``docker restart`` (and ``docker start``) of a container its restart policy had restarted kept
  its ``RestartCount``; dockerd's containerStart sets it back to 0 (``ResetRestartManager(true)``).
- ``docker run --rm busybox nosuch`` printed, besides dockerd's error, ``error waiting for
  container: context canceled`` (CLI 20.10) or ``Error waiting for container: runc run failed: ...``
  (CLI 28): the container was removed after the start had answered, and the wait for ``removed``
  carried the start's error; dockerd removes it before answering and says ``"Error": null``.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.gateway_util import Engine

pytestmark = pytest.mark.root

OLD_CLI = "/usr/bin/docker"  # Debian's 20.10 CLI, besides the fixture's newer one


def _rm(eng: Engine, *names: str) -> None:
    eng.docker("rm", "-f", *names)


def test_id_lists_the_primary_group_in_run_and_exec(eng: Engine) -> None:
    try:
        assert eng.ok("run", "--rm", "-u", "nobody", "busybox", "id").strip() == (
            "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)"
        )
        assert eng.ok("run", "--rm", "-u", "1234:55", "busybox", "id").strip() == "uid=1234 gid=55 groups=55"
        eng.ok("run", "-d", "--name", "groups", "busybox", "sleep", "60")
        assert eng.ok("exec", "groups", "id").strip() == "uid=0(root) gid=0(root) groups=0(root)"
        assert eng.ok("exec", "-u", "nobody", "groups", "id").strip() == (
            "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)"
        )
    finally:
        _rm(eng, "groups")


def _inspect(eng: Engine, name: str) -> dict[str, object]:
    doc: dict[str, object] = json.loads(eng.ok("inspect", name))[0]
    return doc


def _wait_restarted(eng: Engine, count: int) -> None:
    deadline = time.monotonic() + 20
    doc = _inspect(eng, "counted")
    while time.monotonic() < deadline:
        doc = _inspect(eng, "counted")
        if doc["RestartCount"] == count and doc["State"]["Running"]:  # type: ignore[index]
            return
        time.sleep(0.1)
    raise AssertionError(f"the policy did not restart it: {doc}")


def test_a_manual_restart_or_start_sets_the_restart_count_back_to_0(eng: Engine) -> None:
    # exits 3 at once the first time; later runs exit 3 when /stop appears
    script = "if [ -e /ran ]; then while [ ! -e /stop ]; do sleep 0.1; done; rm /stop; exit 3; fi; touch /ran; exit 3"
    try:
        eng.ok("run", "-d", "--restart", "always", "--name", "counted", "busybox", "sh", "-c", script)
        _wait_restarted(eng, 1)
        eng.ok("restart", "-t", "0", "counted")
        assert _inspect(eng, "counted")["RestartCount"] == 0
        eng.ok("exec", "counted", "touch", "/stop")  # exits 3: the policy restarts it
        _wait_restarted(eng, 1)
        eng.ok("stop", "-t", "0", "counted")
        assert _inspect(eng, "counted")["RestartCount"] == 1
        eng.ok("start", "counted")
        assert _inspect(eng, "counted")["RestartCount"] == 0
    finally:
        _rm(eng, "counted")


@pytest.mark.parametrize("cli", [None, OLD_CLI])
def test_run_rm_of_a_missing_command_prints_only_the_start_error(eng: Engine, cli: str | None) -> None:
    if cli is not None and not os.access(cli, os.X_OK):
        pytest.skip(f"no {cli}")
    r = eng.docker("run", "--rm", "busybox", "nosuch", cli=cli)
    err = r.stderr.decode()
    try:
        assert r.returncode == 127, err
        assert 'exec: "nosuch": executable file not found in $PATH' in err
        assert "waiting for container" not in err, err
        assert eng.leftovers() == []
    finally:
        for cid in eng.leftovers():
            eng.docker("rm", "-f", cid)


def test_a_wait_for_removed_answers_without_the_failed_start_s_error(eng: Engine) -> None:
    cid = eng.json("POST", "/containers/create", {"Image": "busybox", "Cmd": ["nosuch"]})["Id"]
    try:
        status, _h, body = eng.api("POST", f"/containers/{cid}/start")
        assert status == 400, body
        # not-running keeps the error, as dockerd's does
        assert eng.json("POST", f"/containers/{cid}/wait")["Error"]["Message"].startswith("runc run failed")
        eng.ok("rm", cid)
    finally:
        for left in eng.leftovers():
            eng.docker("rm", "-f", left)
    cid = eng.json(
        "POST", "/containers/create", {"Image": "busybox", "Cmd": ["nosuch"], "HostConfig": {"AutoRemove": True}}
    )["Id"]
    try:
        eng.api("POST", f"/containers/{cid}/start")
        # removed before the start answered: nothing left to wait for
        assert eng.leftovers() == []
    finally:
        for left in eng.leftovers():
            eng.docker("rm", "-f", left)

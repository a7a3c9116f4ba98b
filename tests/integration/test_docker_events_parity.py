"""What a Docker user sees on ``GET /events`` (``docker events``, docker-py's ``client.events()``)
for each container action, against dockerd's sequence (moby daemon/*.go ``LogContainerEvent*``).

Regression: ``docker kill`` and ``docker stop`` published no Docker event at all (only the
task's ``die``), ``docker restart`` no ``restart``, a ``die`` after ``docker rename`` carried the
old name, and ``exec_create``/``exec_start`` lacked dockerd's ``: <command>`` suffix. The
expected orders (dockerd's):

- ``docker kill -s USR1``: kill (signal=10), the container keeps running;
- ``docker kill``: kill (signal=9), die (exitCode=137);
- ``docker stop``: kill (signal=15), [kill (signal=9) after the timeout], die, stop;
- ``docker restart`` of a running container: kill, die, stop, start, restart;
- ``docker rename``: rename (oldName=/old, name=new), later events named new;
- ``docker exec``: exec_create: <cmd>, exec_start: <cmd>, exec_die (execID, exitCode);
- ``docker run`` in the foreground: create, attach, start, die.

One instance (``dockyard up``) serves the Docker-facing tests; the crash test has its own
services (no supervisor) so it can keep the events service down.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest

from common import dockerfmt
from tests.conftest import need_root
from tests.gateway_util import Engine, engine
from tests.harness import Instance

TRAP = "trap 'echo usr1' USR1; trap 'exit 3' TERM; while true; do sleep 0.1; done"
"""A PID 1 that survives USR1 and exits 3 on TERM (a PID 1 ignores signals it has no handler for)."""


@pytest.fixture(scope="module")
def eng() -> Iterator[Engine]:
    need_root()
    with engine() as e:
        if e.cli is None:
            pytest.skip("no docker CLI installed")
        yield e


def _events(eng: Engine, since: float, cid: str, count: int, *filters: str, timeout_s: float = 15.0) -> list[dict]:  # type: ignore[type-arg]
    """``docker events --since --until now --filter container=<cid>``, polled until ``count``
    events came (events of other publishers may reach the journal a moment after the command
    that caused them returned); then a last look shows there are no more than that."""
    deadline = time.monotonic() + timeout_s
    while True:
        args = ["events", "--since", f"{since:.6f}", "--until", f"{time.time():.6f}", "--format", "{{json .}}"]
        for f in ("container=" + cid, *filters):
            args += ["--filter", f]
        out = eng.ok(*args, timeout=30)
        evs = [json.loads(line) for line in out.splitlines() if line.strip()]
        if len(evs) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    time.sleep(0.3)
    return evs


def _actions(evs: list[dict]) -> list[str]:  # type: ignore[type-arg]
    return [e["Action"] for e in evs]


def _attr(evs: list[dict], action: str, key: str) -> list[str]:  # type: ignore[type-arg]
    return [e["Actor"]["Attributes"].get(key, "") for e in evs if e["Action"] == action]


def _check_envelope(evs: list[dict], cid: str, name: str) -> None:  # type: ignore[type-arg]
    """Type, Actor.ID, name/image attributes, scope, time/timeNano as dockerd sends them."""
    nanos = [e["timeNano"] for e in evs]
    assert nanos == sorted(nanos), evs
    for e in evs:
        assert e["Type"] == "container" and e["scope"] == "local"
        assert e["Actor"]["ID"] == cid and e["id"] == cid and e["status"] == e["Action"]
        assert e["Actor"]["Attributes"]["name"] == name and e["Actor"]["Attributes"]["image"] == "busybox"
        assert e["from"] == "busybox"
        assert e["time"] == e["timeNano"] // 1_000_000_000 and e["timeNano"] > 1_600_000_000 * 10**9


def test_kill_with_a_signal_then_kill(eng: Engine) -> None:
    t0 = time.time()
    cid = eng.ok("run", "-d", "--name", "ev-kill", "busybox", "sh", "-c", TRAP).strip()
    eng.ok("kill", "-s", "USR1", "ev-kill")
    assert _actions(_events(eng, t0, cid, 3)) == ["create", "start", "kill"]
    assert eng.ok("inspect", "-f", "{{.State.Running}}", "ev-kill").strip() == "true"
    eng.ok("kill", "ev-kill")
    evs = _events(eng, t0, cid, 5)
    assert _actions(evs) == ["create", "start", "kill", "kill", "die"], evs
    assert _attr(evs, "kill", "signal") == ["10", "9"]
    assert _attr(evs, "die", "exitCode") == ["137"]
    _check_envelope(evs, cid, "ev-kill")
    # the filter docker users write for it
    assert _actions(_events(eng, t0, cid, 2, "event=kill")) == ["kill", "kill"]
    eng.ok("rm", "ev-kill")


def test_stop_is_kill_die_stop_and_kill_again_after_the_timeout(eng: Engine) -> None:
    t0 = time.time()
    cid = eng.ok("run", "-d", "--name", "ev-stop", "busybox", "sh", "-c", TRAP).strip()
    time.sleep(0.3)  # the shell has its TERM trap
    eng.ok("stop", "-t", "10", "ev-stop")
    evs = _events(eng, t0, cid, 5)
    assert _actions(evs) == ["create", "start", "kill", "die", "stop"], evs
    assert _attr(evs, "kill", "signal") == ["15"] and _attr(evs, "die", "exitCode") == ["3"]
    _check_envelope(evs, cid, "ev-stop")
    assert eng.docker("stop", "ev-stop").returncode == 0  # not running: no event (dockerd: 304)

    t1 = time.time()
    cid2 = eng.ok("run", "-d", "--name", "ev-stop2", "busybox", "sleep", "60").strip()  # ignores TERM
    eng.ok("stop", "-t", "1", "ev-stop2")
    evs = _events(eng, t1, cid2, 6)
    assert _actions(evs) == ["create", "start", "kill", "kill", "die", "stop"], evs
    assert _attr(evs, "kill", "signal") == ["15", "9"] and _attr(evs, "die", "exitCode") == ["137"]
    eng.ok("rm", "ev-stop", "ev-stop2")


def test_restart_of_a_running_container(eng: Engine) -> None:
    t0 = time.time()
    cid = eng.ok("run", "-d", "--name", "ev-restart", "busybox", "sh", "-c", TRAP).strip()
    time.sleep(0.3)
    eng.ok("restart", "-t", "10", "ev-restart")
    evs = _events(eng, t0, cid, 7)
    assert _actions(evs) == ["create", "start", "kill", "die", "stop", "start", "restart"], evs
    assert _attr(evs, "kill", "signal") == ["15"] and _attr(evs, "die", "exitCode") == ["3"]
    _check_envelope(evs, cid, "ev-restart")
    eng.ok("rm", "-f", "ev-restart")
    evs = _events(eng, t0, cid, 10)
    assert _actions(evs)[7:] == ["kill", "die", "destroy"], evs  # rm -f: SIGKILL, no stop
    assert _attr(evs, "kill", "signal")[-1] == "9"


def test_rename_then_the_later_events_carry_the_new_name(eng: Engine) -> None:
    t0 = time.time()
    cid = eng.ok("run", "-d", "--name", "ev-old", "busybox", "sleep", "60").strip()
    eng.ok("rename", "ev-old", "ev-new")
    eng.ok("pause", "ev-new")
    eng.ok("unpause", "ev-new")
    eng.ok("kill", "ev-new")
    evs = _events(eng, t0, cid, 7)
    assert _actions(evs) == ["create", "start", "rename", "pause", "unpause", "kill", "die"], evs
    names = [e["Actor"]["Attributes"]["name"] for e in evs]
    assert names == ["ev-old", "ev-old"] + ["ev-new"] * 5
    assert _attr(evs, "rename", "oldName") == ["/ev-old"]
    eng.ok("rm", "ev-new")


def test_exec_events_name_the_command_and_the_exec(eng: Engine) -> None:
    t0 = time.time()
    cid = eng.ok("run", "-d", "--name", "ev-exec", "busybox", "sleep", "60").strip()
    r = eng.docker("exec", "ev-exec", "sh", "-c", "exit 5")
    assert r.returncode == 5, r.stderr
    evs = _events(eng, t0, cid, 5)
    assert _actions(evs) == ["create", "start", "exec_create: sh -c exit 5", "exec_start: sh -c exit 5", "exec_die"]
    exec_ids = {e["Actor"]["Attributes"]["execID"] for e in evs[2:]}
    assert len(exec_ids) == 1 and len(exec_ids.pop()) == 64
    assert _attr(evs, "exec_die", "exitCode") == ["5"]
    # dockerd's filter matches the action before its ': <command>'
    assert _actions(_events(eng, t0, cid, 1, "event=exec_create")) == ["exec_create: sh -c exit 5"]
    assert eng.docker("exec", "ev-exec", "true").returncode == 0
    evs = _events(eng, t0, cid, 8)
    assert _actions(evs)[5:7] == ["exec_create: true ", "exec_start: true "]  # dockerd's trailing space
    eng.ok("rm", "-f", "ev-exec")


def test_foreground_run_attaches_before_it_starts(eng: Engine) -> None:
    t0 = time.time()
    r = eng.docker("run", "--name", "ev-fg", "busybox", "sh", "-c", "exit 2")
    assert r.returncode == 2, r.stderr
    cid = eng.ok("inspect", "-f", "{{.Id}}", "ev-fg").strip()
    evs = _events(eng, t0, cid, 4)
    assert _actions(evs) == ["create", "attach", "start", "die"], evs
    assert _attr(evs, "die", "exitCode") == ["2"]
    eng.ok("rm", "ev-fg")


def test_resize_top_export_commit(eng: Engine) -> None:
    t0 = time.time()
    cid = eng.ok("run", "-d", "-t", "--name", "ev-misc", "busybox", "sleep", "60").strip()
    status, _h, body = eng.api("POST", f"/containers/{cid}/resize?h=30&w=100")
    assert status == 200, body
    eng.ok("top", "ev-misc")
    with tempfile.TemporaryDirectory() as tmp:
        eng.ok("export", "-o", os.path.join(tmp, "fs.tar"), "ev-misc")
    image_id = eng.ok("commit", "-m", "snap", "ev-misc", "ev-committed:v1").strip()
    evs = _events(eng, t0, cid, 8)
    assert _actions(evs) == ["create", "start", "resize", "top", "export", "pause", "commit", "unpause"], _actions(evs)
    assert (_attr(evs, "resize", "height"), _attr(evs, "resize", "width")) == (["30"], ["100"])
    assert _attr(evs, "commit", "comment") == ["snap"]
    assert _attr(evs, "commit", "imageID") == [image_id]
    assert _attr(evs, "commit", "imageRef") == ["ev-committed:v1"]
    eng.ok("rm", "-f", "ev-misc")
    eng.ok("rmi", "ev-committed:v1")


def test_tag_and_untag_name_the_image_as_dockerd(eng: Engine) -> None:
    image_id = eng.ok("inspect", "-f", "{{.Id}}", "busybox").strip()
    t0 = time.time()
    eng.ok("tag", "busybox", "ev-tag:1")
    eng.ok("rmi", "ev-tag:1")
    deadline = time.monotonic() + 15
    while True:
        args = ["events", "--since", f"{t0:.6f}", "--until", f"{time.time():.6f}", "--filter", "type=image"]
        out = eng.ok(*args, "--format", "{{json .}}")
        evs = [json.loads(line) for line in out.splitlines() if line.strip()]
        if len(evs) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    got = [(e["Action"], e["Actor"]["ID"], e["Actor"]["Attributes"]["name"]) for e in evs]
    assert got == [("tag", image_id, "ev-tag:1"), ("untag", image_id, image_id)], got


def test_docker_py_sees_kill_die_stop(eng: Engine) -> None:
    docker = pytest.importorskip("docker")
    client = docker.DockerClient(base_url=f"unix://{eng.sock}", timeout=60)
    try:
        t0 = time.time()
        c = client.containers.run("busybox", ["sh", "-c", TRAP], name="ev-py", detach=True)
        time.sleep(0.3)
        c.stop(timeout=10)
        want = ["kill", "die", "stop"]
        deadline = time.monotonic() + 15
        while True:
            evs = list(
                client.events(since=t0, until=time.time(), decode=True, filters={"container": c.id, "event": want})
            )
            if len(evs) >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert [e["Action"] for e in evs] == want, evs
        assert [e["Actor"]["Attributes"].get("signal") for e in evs] == ["15", None, None]
        assert evs[1]["Actor"]["Attributes"]["exitCode"] == "3"
        c.remove()
    finally:
        client.close()


def _restarted_while_events_is_down(dy: Instance, name: str) -> int:
    """Run ``name`` (``TRAP``), kill the events service, restart ``name``; the journal's head before."""
    dy.cli("run", "-d", "--name", name, "busybox", "sh", "-c", TRAP, check=True)
    time.sleep(0.3)
    with dy.client("events") as c:
        head = int(c.call("events.head", {})["seq"])
    dy.kill("events")
    assert dy.cli("restart", "-t", "10", name, timeout=60).returncode == 0
    return head


def _container_events_since(dy: Instance, head: int, count: int) -> tuple[list[dict], list[dict]]:  # type: ignore[type-arg]
    """The journal's envelopes after ``head`` and their Docker container events, once there are
    ``count`` of these (or 40 s passed)."""
    deadline = time.monotonic() + 40
    while True:
        with dy.client("events") as c:
            envs = list(c.stream("events.replay", {"since": head}))
        evs = [e for e in (dockerfmt.docker_event(env) for env in envs) if e and e["Type"] == "container"]
        if len(evs) >= count or time.monotonic() > deadline:
            return envs, evs
        time.sleep(0.3)


def test_restart_while_the_events_service_is_down_keeps_the_docker_sequence(dy: Instance) -> None:
    # conftest's dy: services started one by one, no supervisor (the test decides when events is down)
    """The kill comes from the shim's outbox, the stop and restart from the execution service's,
    the second start from a new shim's: all held while events is down, then journaled once each,
    in dockerd's order (``after`` dependencies across the outboxes)."""
    head = _restarted_while_events_is_down(dy, "down")
    dy.cli("kill", "-s", "USR1", "down", check=True)
    dy.start("events")
    want = ["kill", "die", "stop", "start", "restart", "kill"]
    envs, evs = _container_events_since(dy, head, len(want))
    assert [e["Action"] for e in evs] == want, evs
    assert [e["Actor"]["Attributes"].get("signal") for e in evs if e["Action"] == "kill"] == ["15", "10"]
    ids = [env["id"] for env in envs]
    assert len(ids) == len(set(ids))
    # dockyard events takes Docker's names for them
    r = dy.cli("events", "--since-seq", str(head), "--until-seq", str(envs[-1]["seq"]), "-f", "event=stop", timeout=30)
    assert [ln.split()[3] for ln in r.stdout.decode().splitlines()] == ["/containers/stop"], r.stdout
    dy.cli("rm", "-f", "down", check=True)


def test_an_exec_right_after_a_restart_while_the_events_service_is_down_follows_it(dy: Instance) -> None:
    """``exec`` just after ``restart``, both while events is down: the exec's events come from
    the new shim's outbox, the restart from the execution service's; the exec's first event
    names the restart as the one it follows (``ExecRequest.after``), so the journal keeps
    dockerd's order once events is back (it could journal the exec first before)."""
    head = _restarted_while_events_is_down(dy, "rx")
    r = dy.cli("exec", "rx", "sh", "-c", "exit 4", timeout=60)
    assert r.returncode == 4, r.stderr
    dy.start("events")
    want = ["kill", "die", "stop", "start", "restart", "exec_create", "exec_start", "exec_die"]
    envs, evs = _container_events_since(dy, head, len(want))
    assert [e["Action"].split(":")[0] for e in evs] == want, evs
    assert evs[-1]["Actor"]["Attributes"].get("exitCode") == "4"
    ids = [env["id"] for env in envs]
    assert len(ids) == len(set(ids))
    dy.cli("rm", "-f", "rx", check=True)


def test_restarts_while_the_events_service_is_down_lose_no_task_event(dy: Instance) -> None:
    """Three restarts while events is down, with a pause after each one for the take-over of
    the old shim's outbox. The shims of two incarnations once shared one outbox log: the
    take-over removed the log the next shim was writing to, and that shim's exit and delete
    were never journaled (found by a walkthrough). Each incarnation now has an outbox of its
    own (``common.events.shim_outbox``): every task event of every incarnation arrives, once,
    in its shim's order. (The order between the outboxes, and how soon they drain:
    ``test_restarts_while_the_events_service_is_down_keep_dockerd_order_without_a_wait``.)"""
    head = _restarted_while_events_is_down(dy, "rr")
    time.sleep(2.5)  # the old shim's outbox taken over (its drain waits 1 s for events)
    for _ in range(2):
        assert dy.cli("restart", "-t", "10", "rr", timeout=60).returncode == 0
        time.sleep(2.5)
    dy.start("events")
    want = {n: ["create", "start", "kill/1", "exit", "delete"] for n in (2, 3)}
    want[1] = ["kill/1", "exit", "delete"]
    want[4] = ["create", "start"]
    deadline = time.monotonic() + 45
    while True:
        with dy.client("events") as c:
            envs = list(c.stream("events.replay", {"since": head}))
        per: dict[int, list[str]] = {}
        for env in envs:
            if env["topic"].startswith("/tasks/"):
                _cid, incarnation, verb = env["id"].split("/", 2)
                per.setdefault(int(incarnation), []).append(verb)
        if per == want or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert per == want, per
    ids = [env["id"] for env in envs]
    assert len(ids) == len(set(ids))
    dy.cli("rm", "-f", "rr", check=True)


def test_restarts_while_the_events_service_is_down_keep_dockerd_order_without_a_wait(dy: Instance) -> None:
    """Three restarts while events is down, each old shim's outbox taken over by the execution
    service: once events is back, every event is journaled at once (well within the service's
    ``events_after_wait_s``, 30 s) and in dockerd's order. The execution service's batch held a
    ``stop`` behind the old shim's ``exit`` it follows (handed over after the ``restart`` that
    follows the new task's start) while the new task's first event follows that ``stop``: the two
    outboxes waited on each other until the events service gave up after 30 s and journaled
    them out of order (README, known gaps; found by a walkthrough)."""
    head = _restarted_while_events_is_down(dy, "ro")
    time.sleep(2.5)  # the old shim's outbox taken over (its drain waits 1 s for events)
    for _ in range(2):
        assert dy.cli("restart", "-t", "10", "ro", timeout=60).returncode == 0
        time.sleep(2.5)
    restart = ["kill", "die", "stop", "start", "restart"]
    want = restart * 3
    t0 = time.monotonic()
    dy.start("events")
    deadline = t0 + 40
    while True:
        with dy.client("events") as c:
            envs = list(c.stream("events.replay", {"since": head}))
        evs = [e for e in (dockerfmt.docker_event(env) for env in envs) if e and e["Type"] == "container"]
        if len(evs) >= len(want) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    took = time.monotonic() - t0
    assert [e["Action"] for e in evs] == want, f"{took:.1f} s: {' '.join(e['Action'] for e in evs)}"
    assert took < 10, f"the outboxes drained in {took:.1f} s: one waited for another"
    # the times run with the order, as dockerd's: a dead shim's events handed over to the
    # execution service's outbox keep their own (they were stamped when taken over, ~2 s after
    # the stop and restart that follow them, and `docker events --until` ended at the first)
    times = [int(e["timeNano"]) for e in evs]
    assert times == sorted(times), " ".join(f"{e['Action']}@{int(e['timeNano']) % 10**11 / 1e9:.3f}" for e in evs)
    ids = [env["id"] for env in envs]
    assert len(ids) == len(set(ids))
    # every task event of every incarnation, in its shim's order
    per: dict[int, list[str]] = {}
    for env in envs:
        if env["topic"].startswith("/tasks/"):
            _cid, incarnation, verb = env["id"].split("/", 2)
            per.setdefault(int(incarnation), []).append(verb)
    assert per == {
        1: ["kill/1", "exit", "delete"],
        2: ["create", "start", "kill/1", "exit", "delete"],
        3: ["create", "start", "kill/1", "exit", "delete"],
        4: ["create", "start"],
    }, per
    dy.cli("rm", "-f", "ro", check=True)


OUTAGE = {
    "kill": ["create", "start", "kill:9", "die:137"],
    "stop": ["create", "start", "kill:15", "die:3", "stop"],
    "restart": ["create", "start", "kill:15", "die:3", "stop", "start", "restart", "kill:10"],
    "exit": ["create", "start", "die:3"],
    "fg": ["create", "start", "die:2", "destroy"],
}


def _actions_by_name(inst: Instance) -> tuple[dict[str, list[str]], list[str]]:
    with inst.client("events") as c:
        envs = list(c.stream("events.replay", {}))
    per: dict[str, list[str]] = {}
    for env in envs:
        ev = dockerfmt.docker_event(env)
        if ev and ev["Type"] == "container":
            attrs = ev["Actor"]["Attributes"]
            action = ev["Action"]
            if action == "kill":
                action += ":" + attrs.get("signal", "")
            elif action == "die":
                action += ":" + attrs.get("exitCode", "")
            per.setdefault(attrs.get("name", ""), []).append(action)
    ids = [e["id"] for e in envs]
    return per, sorted({i for i in ids if ids.count(i) > 1})


def test_many_containers_while_the_events_service_is_down_keep_their_docker_sequences(dy: Instance) -> None:
    """Containers killed, stopped, restarted then signalled, exiting on their own, and run in the
    foreground with --rm, all while the events service is down: once it is back, each one's
    events come complete, once each, in dockerd's order. The shims' unacknowledged events reach
    the execution service's outbox behind its own events that follow them (/containers/stop
    after /tasks/exit, /containers/delete after /tasks/delete): they were held until the wait
    ran out and journaled the wrong way round (found with 25 containers: 7 out of order, and
    with batches some missing for minutes)."""
    n = 2
    for i in range(n):
        for kind in ("kill", "stop", "restart", "exit"):
            cmd = TRAP if kind != "exit" else "sleep 1.5; exit 3"
            dy.cli("run", "-d", "--name", f"{kind}-{i}", "busybox", "sh", "-c", cmd, check=True)
    time.sleep(0.5)
    dy.kill("events")
    results: dict[str, subprocess.CompletedProcess[bytes]] = {}

    def do(key: str, *args: str) -> None:
        results[key] = dy.cli(*args, timeout=120)

    threads = []
    for i in range(n):
        threads += [
            threading.Thread(target=do, args=(f"kill-{i}", "kill", f"kill-{i}")),
            threading.Thread(target=do, args=(f"stop-{i}", "stop", "-t", "10", f"stop-{i}")),
            threading.Thread(
                target=lambda i=i: (
                    do(f"restart-{i}", "restart", "-t", "10", f"restart-{i}"),
                    do(f"restart-{i}-usr1", "kill", "-s", "USR1", f"restart-{i}"),
                )
            ),
            threading.Thread(
                target=do,
                args=(f"fg-{i}", "run", "--rm", "--name", f"fg-{i}", "busybox", "sh", "-c", "echo out; exit 2"),
            ),
        ]
    try:
        for t in threads:
            t.start()
        time.sleep(3)
    finally:
        dy.start("events")
        for t in threads:
            t.join(150)
    for key, r in results.items():
        want = (2, b"out\n") if key.startswith("fg-") else (0, r.stdout)
        assert (r.returncode, r.stdout) == want, (key, r.stderr)
    expected = {f"{kind}-{i}": seq for kind, seq in OUTAGE.items() for i in range(n)}
    deadline = time.monotonic() + 20  # well inside the 30 s a held event waits for the one it follows
    while True:
        per, duplicates = _actions_by_name(dy)
        got = {name: per.get(name) for name in expected}
        if got == expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert duplicates == []
    assert got == expected
    for name in expected:
        dy.cli("rm", "-f", name)

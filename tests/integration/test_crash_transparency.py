"""Crash transparency: services die and come back, and no lifecycle event or exit status is lost.

Issue 6's promises, checked with real processes: lifecycle events produced while
the events service is down reach the journal exactly once when it returns; a
subscriber that restarts with ``--since-seq <last seq>`` misses nothing; every
service stops cleanly (exit 0) on SIGTERM.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from common import topics
from tests.conftest import need_root
from tests.harness import PROJECT, Instance

ALL = ("events", "snapshot", "image", "execution")


@pytest.fixture
def svc() -> Iterator[Instance]:
    """Services started one by one (no supervisor: the tests decide who is down)."""
    need_root()
    inst = Instance()
    try:
        inst.start(*ALL)
        inst.load_busybox()
        yield inst
    finally:
        inst.cleanup()


def _task_events(inst: Instance, since: int = 0) -> list[dict]:  # type: ignore[type-arg]
    return [
        e
        for e in inst.client("events").stream("events.replay", {"since": since, "filters": {"topic": ["/tasks/"]}})
        if e["topic"] in topics.LIFECYCLE
    ]


def test_lifecycle_events_made_while_events_is_down_arrive_exactly_once(svc: Instance) -> None:
    head = svc.client("events").call("events.head", {})["seq"]
    svc.kill("events")
    names = [f"down{i}" for i in range(10)]
    for name in names:
        r = svc.cli("run", "--rm", "--name", name, "busybox", "sh", "-c", "exit 3")
        assert r.returncode == 3, r.stderr
    svc.start("events")
    deadline = time.monotonic() + 30
    while True:
        events = _task_events(svc, head)
        if len(events) >= 40 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    by_container: dict[str, list[str]] = {}
    for e in events:
        by_container.setdefault(e["event"]["container_id"], []).append(e["topic"])
    assert len(by_container) == 10
    for cid, seen in by_container.items():
        assert seen == list(topics.LIFECYCLE), f"{cid}: {seen}"
    exits = [e for e in events if e["topic"] == topics.TASK_EXIT]
    assert all(e["event"]["exit_status"] == 3 for e in exits)
    assert len({e["id"] for e in events}) == 40


def test_a_subscriber_resuming_from_its_last_seq_misses_nothing(svc: Instance) -> None:
    def follow(since: int, count: int) -> list[dict]:  # type: ignore[type-arg]
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "events", "--since-seq", str(since), "--json", "--filter", "type=task"],
            env=svc.env,
            cwd=PROJECT,
            stdout=subprocess.PIPE,
        )
        got = []
        try:
            assert proc.stdout is not None
            while len(got) < count:
                got.append(json.loads(proc.stdout.readline()))
        finally:
            proc.kill()  # the subscriber "crashes"
            proc.wait()
        return got

    svc.cli("run", "--rm", "busybox", "true", check=True)
    first = follow(0, 4)
    last = first[-1]["seq"]
    for _ in range(3):  # published while no subscriber runs
        svc.cli("run", "--rm", "busybox", "true", check=True)
    rest = follow(last, 12)
    seqs = [e["seq"] for e in first + rest]
    assert seqs == sorted(set(seqs))
    assert Counter(e["topic"] for e in first + rest) == {t: 4 for t in topics.LIFECYCLE}


@pytest.mark.parametrize("service", ("events", "snapshot", "image", "execution", "gateway"))
def test_every_service_exits_0_on_sigterm(instance: Instance, service: str) -> None:
    need_root()
    instance.start(service)
    proc = instance.procs[service]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert not (Path(instance.state) / f"{service}.pid").exists()


def test_snapshot_of_a_create_cut_short_by_a_crash_is_removed(svc: Instance) -> None:
    # the state a SIGKILL of execution between snapshot.prepare and recording the container leaves
    snap = svc.client("snapshot")
    chain = svc.client("image").call("image.resolve", {"ref": "busybox"})["chain_id"]
    orphan = "f" * 64
    snap.call("snapshot.prepare", {"key": orphan, "parent": chain, "labels": {"dockyard.container": orphan}})
    svc.cli("run", "-d", "--name", "real", "busybox", "sleep", "60", check=True)
    svc.kill("execution")
    svc.start("execution")
    deadline = time.monotonic() + 20
    keys: list[str] = []
    while time.monotonic() < deadline:
        keys = [
            s["name"] for s in snap.call("snapshot.list", {"filters": ['labels."dockyard.container"']})["snapshots"]
        ]
        if orphan not in keys:
            break
        time.sleep(0.2)
    assert orphan not in keys
    assert len(keys) == 1  # the real container's snapshot is kept


def test_a_containers_events_keep_their_order_across_publishers_after_events_was_down(svc: Instance) -> None:
    """/containers/create, then the task's create/start/exit/delete, then /containers/delete.

    The execution service and the shim publish through separate outboxes; when both drain
    at once after the events service comes back, ``after`` dependencies keep the order.
    """
    head = svc.client("events").call("events.head", {})["seq"]
    svc.kill("events")
    for i in range(3):
        assert svc.cli("run", "--rm", "--name", f"ord{i}", "busybox", "true").returncode == 0
    svc.start("events")
    want = ["/containers/create", *topics.LIFECYCLE, "/containers/delete"]
    deadline = time.monotonic() + 40
    while True:
        seen: dict[str, list[str]] = {}
        for e in svc.client("events").stream("events.replay", {"since": head}):
            ev = e["event"]
            cid = ev.get("container_id") or (ev.get("id") if e["topic"].startswith("/containers/") else None)
            if cid and e["topic"] in want:
                seen.setdefault(cid, []).append(e["topic"])
        if (len(seen) == 3 and all(len(v) == len(want) for v in seen.values())) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert len(seen) == 3
    for cid, topics_seen in seen.items():
        assert topics_seen == want, f"{cid[:12]}: {topics_seen}"


def _read_events(proc: subprocess.Popen[bytes], count: int, timeout_s: float = 40.0) -> list[dict]:  # type: ignore[type-arg]
    """``count`` JSON lines from a follower's stdout (fewer if it ends or the time is up)."""
    import selectors

    got: list[dict] = []  # type: ignore[type-arg]
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
            break
        line = proc.stdout.readline()
        if not line:
            break
        got.append(json.loads(line))
    return got


def test_a_following_subscriber_survives_a_restart_of_the_events_service(svc: Instance) -> None:
    """``dockyard events`` (no --since: live from now) keeps following across a SIGKILL of the
    events service: what was journaled before, during (from the outboxes) and after the outage
    comes once each, in seq order, without a gap."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "events", "--json", "--filter", "type=task"],
        env=svc.env,
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,  # unbuffered: a line read must not leave others in a buffer select() cannot see
    )
    try:
        time.sleep(1.0)  # subscribed (the CLI reads the head first)
        svc.cli("run", "--rm", "--name", "before", "busybox", "true", check=True)
        got = _read_events(proc, 4)
        svc.kill("events")
        svc.cli("run", "--rm", "--name", "during", "busybox", "true", check=True)
        svc.start("events")
        svc.cli("run", "--rm", "--name", "after", "busybox", "true", check=True)
        got += _read_events(proc, 8)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
        proc.wait()
    names = [e["event"].get("container_name") for e in got if e["topic"] == topics.TASK_CREATE]
    assert names == ["before", "during", "after"]
    assert Counter(e["topic"] for e in got) == {t: 3 for t in topics.LIFECYCLE}
    seqs = [e["seq"] for e in got]
    assert seqs == sorted(set(seqs))

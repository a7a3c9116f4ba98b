"""``dockerfmt.docker_event``: journal envelopes -> the Docker events dockerd would send
(moby daemon/*.go ``LogContainerEvent*``), for Dockyard's own topics and the payload fields
added for Docker (exec args, ``started_at``, commit ids); older payloads still map."""

from __future__ import annotations

from typing import Any

from common import dockerfmt, topics

CID = "c" * 64
EXEC = "e" * 64
NAMES = {"container_name": "web", "image": "busybox"}


def _ev(topic: str, event: dict[str, Any], ts: str = "2024-05-01T10:00:00.123456Z") -> dict[str, Any]:
    ev = dockerfmt.docker_event({"topic": topic, "event": event, "timestamp": ts, "namespace": "default"})
    assert ev is not None, topic
    return ev


def test_kill_carries_the_signal_number() -> None:
    ev = _ev(topics.TASK_KILL, {"container_id": CID, "signal": 10, **NAMES})
    assert (ev["Type"], ev["Action"], ev["status"], ev["id"], ev["from"]) == (
        "container",
        "kill",
        "kill",
        CID,
        "busybox",
    )
    assert ev["Actor"] == {"ID": CID, "Attributes": {"image": "busybox", "name": "web", "signal": "10"}}
    assert ev["scope"] == "local"
    assert ev["timeNano"] == 1714557600123456000 and ev["time"] == 1714557600


def test_die_has_exit_code_and_exec_duration() -> None:
    body = {"container_id": CID, "id": CID, "pid": 7, "exit_status": 143, **NAMES}
    old = _ev(topics.TASK_EXIT, {**body, "exited_at": "2024-05-01T10:00:05Z"})
    assert old["Action"] == "die" and old["Actor"]["Attributes"] == {
        "exitCode": "143",
        "image": "busybox",
        "name": "web",
    }
    new = _ev(topics.TASK_EXIT, {**body, "exited_at": "2024-05-01T10:00:05.9Z", "started_at": "2024-05-01T10:00:01Z"})
    assert new["Actor"]["Attributes"]["execDuration"] == "4"
    ex = _ev(topics.TASK_EXIT, {**body, "id": EXEC, "exit_status": 5, "started_at": "2024-05-01T10:00:01Z"})
    assert ex["Action"] == "exec_die"
    assert ex["Actor"]["Attributes"] == {"execID": EXEC, "exitCode": "5", "image": "busybox", "name": "web"}


def test_exec_actions_name_the_command_as_dockerd() -> None:
    added = _ev(topics.TASK_EXEC_ADDED, {"container_id": CID, "exec_id": EXEC, "args": ["sh", "-c", "exit 5"], **NAMES})
    assert added["Action"] == "exec_create: sh -c exit 5" and added["Actor"]["Attributes"]["execID"] == EXEC
    started = _ev(topics.TASK_EXEC_STARTED, {"container_id": CID, "exec_id": EXEC, "pid": 9, "args": ["true"]})
    assert started["Action"] == "exec_start: true "  # Entrypoint + " " + join(Args): dockerd's trailing space
    legacy = _ev(topics.TASK_EXEC_ADDED, {"container_id": CID, "exec_id": EXEC})  # journaled before the args
    assert legacy["Action"] == "exec_create"
    assert dockerfmt.event_matches(added, {"event": ["exec_create"]})
    assert not dockerfmt.event_matches(added, {"event": ["exec_start"]})
    assert dockerfmt.event_topics(added["Action"]) == [topics.TASK_EXEC_ADDED]


def test_dockyard_own_container_topics() -> None:
    base = {"id": CID, "name": "web", "image": "busybox"}
    want = {
        topics.CONTAINER_STOP: "stop",
        topics.CONTAINER_RESTART: "restart",
        topics.CONTAINER_ATTACH: "attach",
        topics.CONTAINER_EXPORT: "export",
        topics.CONTAINER_TOP: "top",
    }
    for topic, action in want.items():
        ev = _ev(topic, base)
        assert ev["Action"] == action and ev["Actor"] == {"ID": CID, "Attributes": {"image": "busybox", "name": "web"}}
        assert dockerfmt.event_topics(action) == [topic]
    resize = _ev(topics.CONTAINER_RESIZE, {**base, "height": 30, "width": 100})
    assert resize["Action"] == "resize"
    assert resize["Actor"]["Attributes"] == {"height": "30", "width": "100", "image": "busybox", "name": "web"}
    assert dockerfmt.event_topics("kill") == [topics.TASK_KILL]
    assert set(topics.DOCKYARD_OWN) <= set(topics.ALL)


def test_rename_and_commit_attributes() -> None:
    base = {"id": CID, "name": "new", "image": "busybox"}
    ren = _ev(topics.CONTAINER_UPDATE, {**base, "action": "rename", "old_name": "old"})
    assert ren["Action"] == "rename" and ren["Actor"]["Attributes"]["oldName"] == "/old"
    commit = _ev(
        topics.CONTAINER_UPDATE,
        {
            **base,
            "action": "commit",
            "comment": "snap",
            "image_id": "sha256:" + "a" * 64,
            "image_ref": "docker.io/library/x:v1",
        },
    )
    attrs = commit["Actor"]["Attributes"]
    assert (attrs["comment"], attrs["imageID"], attrs["imageRef"]) == ("snap", "sha256:" + "a" * 64, "x:v1")
    legacy = _ev(topics.CONTAINER_UPDATE, {**base, "action": "commit"})
    assert legacy["Action"] == "commit" and legacy["Actor"]["Attributes"]["imageRef"] == ""


def test_label_and_container_filters_see_the_new_events() -> None:
    ev = _ev(topics.TASK_KILL, {"container_id": CID, "signal": 9, "labels": {"tier": "web"}, **NAMES})
    assert dockerfmt.event_matches(ev, {"type": ["container"], "event": ["kill"], "label": ["tier=web"]})
    assert dockerfmt.event_matches(ev, {"container": ["web"]}) and dockerfmt.event_matches(
        ev, {"container": [CID[:12]]}
    )
    assert not dockerfmt.event_matches(ev, {"event": ["die"]})


def test_image_actors_as_dockerd_names_them() -> None:
    iid = "sha256:" + "b" * 64
    pull = _ev(topics.IMAGE_CREATE, {"name": "docker.io/library/busybox:latest", "action": "pull", "image_id": iid})
    assert (pull["Action"], pull["Actor"]["ID"], pull["Actor"]["Attributes"]["name"]) == (
        "pull",
        "busybox:latest",
        "busybox:latest",
    )
    tag = _ev(topics.IMAGE_CREATE, {"name": "docker.io/library/web:1", "action": "tag", "image_id": iid})
    assert (tag["Action"], tag["Actor"]["ID"], tag["Actor"]["Attributes"]["name"]) == ("tag", iid, "web:1")
    untag = _ev(topics.IMAGE_DELETE, {"name": "docker.io/library/web:1", "image_id": iid})
    assert (untag["Action"], untag["Actor"]["ID"], untag["Actor"]["Attributes"]["name"]) == ("untag", iid, iid)
    load = _ev(topics.IMAGE_CREATE, {"name": "docker.io/library/web:1", "action": "load", "image_id": iid})
    assert (load["Actor"]["ID"], load["Actor"]["Attributes"]["name"]) == (iid, iid)
    committed = _ev(topics.IMAGE_CREATE, {"name": "docker.io/library/snap:v1", "action": "commit", "image_id": iid})
    assert (committed["Action"], committed["Actor"]["ID"]) == ("tag", iid)
    legacy = _ev(topics.IMAGE_DELETE, {"name": "docker.io/library/web:1"})  # journaled without the id
    assert (legacy["Action"], legacy["Actor"]["ID"]) == ("untag", "web:1")
    dangling = {"topic": topics.IMAGE_CREATE, "event": {"name": "<none>@sha256:" + "c" * 64, "labels": {}}}
    assert dockerfmt.docker_event({**dangling, "timestamp": "2024-05-01T10:00:00Z"}) is None

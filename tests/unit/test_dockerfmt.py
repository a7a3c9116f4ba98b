"""Docker JSON shapes made from Dockyard's models (``common.dockerfmt``): what docker clients parse."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from common import dockerfmt

NOW = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)


def _container(**over: object) -> dict:  # type: ignore[type-arg]
    c = {
        "id": "a" * 64,
        "name": "web",
        "namespace": "default",
        "image": "busybox",
        "image_id": "sha256:" + "b" * 64,
        "created_at": NOW - dt.timedelta(seconds=30),
        "labels": {"app": "x"},
        "snapshot_key": "a" * 64,
        "config": {"image": "busybox", "cmd": ["sh", "-c", "echo hi"], "tty": True, "auto_remove": True},
        "path": "sh",
        "args": ["-c", "echo hi"],
        "hostname": "aaaaaaaaaaaa",
        "state": {
            "status": "running",
            "running": True,
            "pid": 42,
            "exit_code": 0,
            "started_at": NOW - dt.timedelta(seconds=3),
            "finished_at": None,
        },
        "log_path": "/var/lib/dockyard/containers/default/x/x-json.log",
    }
    c.update(over)  # type: ignore[arg-type]
    return c


def test_filters_accept_both_encodings_and_refuse_garbage() -> None:
    assert dockerfmt.parse_filters('{"label":{"a=b":true,"c":false}}') == {"label": ["a=b"]}
    assert dockerfmt.parse_filters('{"label":["a=b"],"status":["exited"]}') == {"label": ["a=b"], "status": ["exited"]}
    assert dockerfmt.parse_filters(None) == {} and dockerfmt.parse_filters("") == {}
    for bad in ("{", "[1]", '{"label": 3}'):
        with pytest.raises(dockerfmt.FormatError):
            dockerfmt.parse_filters(bad)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "Less than a second"), (1, "1 second"), (3, "3 seconds"), (61, "About a minute"), (600, "10 minutes")],
)
def test_human_duration_is_go_units(seconds: float, text: str) -> None:
    assert dockerfmt.human_duration(seconds) == text


def test_status_strings_as_docker_ps_prints_them() -> None:
    running = {"status": "running", "started_at": NOW - dt.timedelta(seconds=3)}
    assert dockerfmt.state_status(running, NOW) == "Up 3 seconds"
    assert dockerfmt.state_status({**running, "status": "paused"}, NOW) == "Up 3 seconds (Paused)"
    exited = {"status": "exited", "exit_code": 0, "started_at": NOW, "finished_at": NOW - dt.timedelta(seconds=2)}
    assert dockerfmt.state_status(exited, NOW) == "Exited (0) 2 seconds ago"
    assert dockerfmt.state_status({"status": "created"}, NOW) == "Created"
    assert dockerfmt.state_status({"status": "removing"}, NOW) == "Removal In Progress"


def test_create_request_maps_config_and_host_config() -> None:
    body = {
        "Image": "busybox",
        "Cmd": ["echo", "hi"],
        "Entrypoint": "sh",
        "Env": ["A=1"],
        "Tty": True,
        "OpenStdin": True,
        "StdinOnce": True,
        "Labels": {"k": "v"},
        "StopTimeout": 3,
        "HostConfig": {
            "AutoRemove": True,
            "Binds": ["/tmp:/data:ro"],
            "Tmpfs": {"/run": "size=64m"},
            "Memory": 1 << 26,
            "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 2},
            "ConsoleSize": [24, 80],
            "NetworkMode": "bridge",
        },
    }
    req = dockerfmt.create_request(body, "web")
    assert req["image"] == "busybox" and req["name"] == "web"
    assert req["cmd"] == ["echo", "hi"] and req["entrypoint"] == ["sh"]
    assert req["tty"] and req["open_stdin"] and req["stdin_once"] and req["auto_remove"]
    assert req["network_mode"] == "none"
    assert {"type": "bind", "source": "/tmp", "target": "/data", "read_only": True} in req["mounts"]
    assert {"type": "tmpfs", "target": "/run", "options": ["size=64m"]} in req["mounts"]
    assert req["resources"] == {"memory": 1 << 26}
    assert req["restart_policy"] == {"name": "on-failure", "maximum_retry_count": 2}
    assert req["console_size"] == [24, 80] and req["stop_timeout"] == 3


@pytest.mark.parametrize(
    "body",
    [
        [],
        {},
        {"Image": 3},
        {"Image": "busybox", "Cmd": 5},
        {"Image": "busybox", "Env": [1]},
        {"Image": "busybox", "Tty": "yes"},
        {"Image": "busybox", "HostConfig": []},
        {"Image": "busybox", "HostConfig": {"Memory": "1g"}},
        {"Image": "busybox", "HostConfig": {"Binds": ["relative"]}},
        {"Image": "busybox", "HostConfig": {"NetworkMode": "container:x"}},
        {"Image": "busybox", "HostConfig": {"LogConfig": {"Type": "syslog"}}},
    ],
)
def test_create_request_refuses_wrong_types_naming_the_field(body: object) -> None:
    with pytest.raises(dockerfmt.FormatError) as err:
        dockerfmt.create_request(body)
    assert str(err.value)


@pytest.mark.parametrize(
    ("spec", "mount"),
    [
        ("/anon2", {"type": "volume", "source": "", "target": "/anon2", "read_only": False}),
        ("/h:/c", {"type": "bind", "source": "/h", "target": "/c", "read_only": False}),
        ("/h:/c:ro,z", {"type": "bind", "source": "/h", "target": "/c", "read_only": True}),
        ("named:/c:rw,nocopy", {"type": "volume", "source": "named", "target": "/c", "read_only": False}),
    ],
)
def test_binds_parse_as_mobys_parse_mount_raw(spec: str, mount: dict[str, object]) -> None:
    assert dockerfmt.create_request({"Image": "b", "HostConfig": {"Binds": [spec]}})["mounts"] == [mount]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("/data:ro", "invalid volume specification: '/data:ro'"),
        (":/c", "invalid volume specification: ':/c'"),
        ("/a:/b:ro:x", "invalid volume specification: '/a:/b:ro:x'"),
        ("/h:/c:ro,ro", "invalid mode: ro,ro"),
        (
            "/h::ro",
            "invalid volume specification: '/h::ro': invalid mount config for type \"bind\": "
            "field Target must not be empty",
        ),
    ],
)
def test_binds_moby_refuses(spec: str, message: str) -> None:
    with pytest.raises(dockerfmt.FormatError, match="^" + re.escape(message) + "$"):
        dockerfmt.create_request({"Image": "b", "HostConfig": {"Binds": [spec]}})


def test_config_volumes_not_covered_by_a_mount_are_anonymous_volumes() -> None:
    """docker-py lists every bind's target in Config.Volumes too; ``docker run -v /c`` only there."""
    body = {
        "Image": "b",
        "Volumes": {"/c": {}, "/anon/": {}, "/t": {}},
        "HostConfig": {"Binds": ["/h:/c"], "Tmpfs": {"/t": ""}},
    }
    req = dockerfmt.create_request(body)
    assert [(m["type"], m.get("source"), m["target"]) for m in req["mounts"]] == [
        ("bind", "/h", "/c"),
        ("tmpfs", None, "/t"),
    ]
    # every path goes on: the execution service gives an anonymous volume to each one no mount
    # covers (here /anon/), merged with the image's own volumes (tests/integration/test_volume_parity.py)
    assert req["volumes"] == ["/anon/", "/c", "/t"]


def test_container_summary_and_inspect_shapes() -> None:
    c = _container()
    s = dockerfmt.container_summary(c, NOW)
    assert s["Names"] == ["/web"] and s["State"] == "running" and s["Status"] == "Up 3 seconds"
    assert s["Command"] == "sh -c echo hi" and s["Created"] == int((NOW - dt.timedelta(seconds=30)).timestamp())
    i = dockerfmt.container_inspect(c)
    assert i["Name"] == "/web" and i["State"]["Running"] and i["State"]["Pid"] == 42
    assert i["State"]["FinishedAt"] == dockerfmt.ZERO_TIME
    assert i["Created"].endswith("000Z")
    assert i["HostConfig"]["LogConfig"]["Type"] == "json-file"  # docker-py's run() needs it to return output
    assert i["HostConfig"]["AutoRemove"] is True and i["Config"]["Tty"] is True
    assert i["Config"]["Cmd"] == ["sh", "-c", "echo hi"]
    json.dumps(i)


def test_inspect_config_env_is_the_containers_not_the_process_env() -> None:
    """Config.Env: the request's entries then the image's (``Container.env``), never the
    HOSTNAME/TERM the process gets; a record without ``env`` shows the request's."""
    c = _container()
    c["config"] = {**c["config"], "env": ["A=1"]}
    assert dockerfmt.container_inspect({**c, "env": ["A=1", "PATH=/bin"]})["Config"]["Env"] == ["A=1", "PATH=/bin"]
    assert dockerfmt.container_inspect(c)["Config"]["Env"] == ["A=1"]


def test_image_summaries_merge_names_of_one_image() -> None:
    base = {
        "id": "sha256:" + "c" * 64,
        "size": 100,
        "created": "2023-01-01T00:00:00Z",
        "created_at": NOW,
        "config_labels": {},
    }
    items = [
        {**base, "repo_tags": ["busybox:latest"], "repo_digests": ["busybox@sha256:" + "d" * 64]},
        {**base, "repo_tags": ["mine:1"], "repo_digests": []},
    ]
    out = dockerfmt.image_summaries(items)
    assert len(out) == 1
    assert out[0]["RepoTags"] == ["busybox:latest", "mine:1"] and out[0]["Size"] == 100
    assert "VirtualSize" not in out[0] and "VirtualSize" in dockerfmt.image_summaries(items, (1, 41))[0]


def test_events_are_docker_events() -> None:
    when = NOW
    exit_env = {
        "seq": 5,
        "timestamp": when,
        "namespace": "default",
        "topic": "/tasks/exit",
        "event": {
            "container_id": "a" * 64,
            "id": "a" * 64,
            "exit_status": 7,
            "image": "busybox",
            "container_name": "web",
        },
    }
    ev = dockerfmt.docker_event(exit_env)
    assert ev is not None
    assert ev["Type"] == "container" and ev["Action"] == "die" and ev["status"] == "die"
    assert ev["Actor"] == {"ID": "a" * 64, "Attributes": {"exitCode": "7", "image": "busybox", "name": "web"}}
    assert ev["time"] == int(when.timestamp()) and ev["timeNano"] == int(when.timestamp()) * 10**9
    assert ev["scope"] == "local"
    exec_exit = {**exit_env, "event": {**exit_env["event"], "id": "e" * 64}}  # type: ignore[dict-item]
    assert dockerfmt.docker_event(exec_exit)["Action"] == "exec_die"  # type: ignore[index]
    assert dockerfmt.docker_event({**exit_env, "topic": "/snapshots/commit"}) is None
    img = dockerfmt.docker_event({**exit_env, "topic": "/images/delete", "event": {"name": "docker.io/library/x:1"}})
    assert img is not None and img["Type"] == "image" and img["Action"] == "untag" and img["Actor"]["ID"] == "x:1"
    assert dockerfmt.event_matches(ev, {"type": ["container"], "event": ["die"], "container": ["web"]})
    assert not dockerfmt.event_matches(ev, {"type": ["image"]})
    assert not dockerfmt.event_matches(ev, {"container": ["other"]})


def test_stats_one_sample_gives_the_measured_cpu_percent_back() -> None:
    sample = {
        "id": "a" * 64,
        "name": "web",
        "read": NOW,
        "cpu_total_ns": 5_000_000_000,
        "system_cpu_ns": 900_000_000_000,
        "online_cpus": 2,
        "cpu_percent": 25.0,
        "memory_usage": 1000,
        "memory_limit": 4000,
        "pids": 3,
    }
    s = dockerfmt.stats(sample)
    cpu, pre = s["cpu_stats"], s["precpu_stats"]
    cpu_delta = cpu["cpu_usage"]["total_usage"] - pre["cpu_usage"]["total_usage"]
    sys_delta = cpu["system_cpu_usage"] - pre["system_cpu_usage"]
    assert cpu_delta / sys_delta * cpu["online_cpus"] * 100 == pytest.approx(25.0)  # the docker CLI's formula
    assert s["memory_stats"]["usage"] == 1000 and s["pids_stats"]["current"] == 3 and s["name"] == "/web"


def test_mux_frames_split_at_any_byte_decode_the_same() -> None:
    """Case C23 (d): a framed stream fed one byte at a time decodes to the same bytes per stream."""
    big = bytes(range(256)) * 400  # 100 KiB, more than one 64 KiB read
    stream = (
        dockerfmt.mux_frame(1, b"out")
        + dockerfmt.mux_frame(2, b"err")
        + dockerfmt.mux_frame(1, b"")
        + dockerfmt.mux_frame(1, big)
        + dockerfmt.mux_frame(2, b"x")
    )
    assert stream[:8] == b"\x01\x00\x00\x00\x00\x00\x00\x03"
    buf = bytearray()
    got: list[tuple[int, bytes]] = []
    for i in range(len(stream)):
        buf += stream[i : i + 1]
        got += dockerfmt.demux(buf)
    assert got == [(1, b"out"), (2, b"err"), (1, b""), (1, big), (2, b"x")] and not buf


def test_docker_times() -> None:
    assert dockerfmt.parse_docker_time("1700000000") == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC)
    assert dockerfmt.parse_docker_time("1700000000.5").microsecond == 500000
    assert dockerfmt.parse_docker_time("10m", NOW) == NOW - dt.timedelta(minutes=10)
    assert dockerfmt.parse_docker_time("2024-05-01T12:00:00Z") == NOW
    with pytest.raises(dockerfmt.FormatError):
        dockerfmt.parse_docker_time("yesterday")
    assert dockerfmt.rfc3339(None) == dockerfmt.ZERO_TIME
    assert dockerfmt.rfc3339("2024-05-01T12:00:00.123456789Z") == "2024-05-01T12:00:00.123456000Z"


def test_docker_times_take_docker_forms() -> None:
    """moby's ``GetTimestamp``: compound Go durations, RFC 3339's shorter forms, a zone or ``zone``."""
    parse = dockerfmt.parse_docker_time
    assert parse("1h30m", NOW) == parse("90m", NOW) == NOW - dt.timedelta(minutes=90)
    assert parse("1.5s", NOW) == parse("1500ms", NOW) == NOW - dt.timedelta(seconds=1.5)
    assert parse("-1m", NOW) == NOW + dt.timedelta(minutes=1)
    assert parse("2024-05-01") == dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    assert parse("2024-05-01T13:00:00+01:00") == NOW
    assert parse("2024-05-01T13:00:00+01:00").tzinfo == dt.UTC
    assert parse("2024-05-01+02:00") == dt.datetime(2024, 4, 30, 22, tzinfo=dt.UTC)
    eastern = dt.timezone(dt.timedelta(hours=-5))
    assert parse("2024-05-01T07", zone=eastern) == parse("2024-05-01T07:00", zone=eastern) == NOW
    assert parse("2024-05-01T07:00:00Z", zone=eastern) == NOW - dt.timedelta(hours=5)  # a zone given wins
    for bad in ("1d", "1h30", "2024-05-01 12:00", "2024-05-32", "99999999999999999999", "2024-05-01T12:00:00.5.5"):
        with pytest.raises(dockerfmt.FormatError, match="invalid time value"):
            parse(bad, NOW)


def test_pull_progress_lines() -> None:
    assert dockerfmt.pull_progress({"status": "Pulling fs layer", "id": "abc"}) == {
        "status": "Pulling fs layer",
        "id": "abc",
        "progressDetail": {},
    }
    line = dockerfmt.pull_progress({"status": "Downloading", "id": "abc", "current": 50, "total": 100})
    assert line is not None and line["progressDetail"] == {"current": 50, "total": 100} and "[" in line["progress"]
    assert dockerfmt.pull_progress({"status": "Digest: sha256:x"}) == {"status": "Digest: sha256:x"}
    assert dockerfmt.pull_progress({"status": "message", "message": "Loaded image: a:1"}) == {
        "status": "Loaded image: a:1"
    }
    assert dockerfmt.pull_progress({"status": "done", "result": {}}) is None


def test_event_topics_cover_every_topic_docker_event_maps() -> None:
    """``event_topics`` (the CLI's pre-filter) never drops an envelope ``docker_event`` would name so."""
    from common import topics

    payloads = [
        {"container_id": "c1", "id": "c1"},
        {"container_id": "c1", "id": "e1"},
        {"id": "c1", "action": "rename"},
        {"name": "busybox:latest", "action": "pull"},
        {"name": "busybox:latest"},
    ]
    seen = set()
    for topic in topics.ALL:
        for event in payloads:
            ev = dockerfmt.docker_event({"topic": topic, "event": event, "timestamp": "2024-01-01T00:00:00Z"})
            if ev is None:
                continue
            seen.add(ev["Action"])
            assert topic in dockerfmt.event_topics(ev["Action"]), (topic, ev["Action"])
            assert ev["Type"] in [t for t in ("container", "image") if topic.split("/")[1].rstrip("s") in
                                  dockerfmt.event_kinds(t)]  # fmt: skip
    assert {"create", "start", "die", "exec_die", "destroy", "pause", "unpause", "oom", "exec_create"} <= seen
    assert dockerfmt.event_topics("die") == ["/tasks/exit"]
    assert dockerfmt.event_kinds("container") == ["container", "task"] and dockerfmt.event_kinds("task") == ["task"]

"""Regression: ``dockyard events --since 0 -f event=die`` printed nothing.

The CLI's ``event=`` filter compared Docker's action names with the last part of our
topics (``/tasks/exit`` is ``die`` to Docker). It now takes Docker's names, mapped by
``common.dockerfmt`` as the gateway maps events for ``GET /events``, and ``type=`` takes
Docker's types (``container`` covers the task topics).
"""

from __future__ import annotations

from tests.harness import Instance


def _events(dy: Instance, until: int, *filters: str) -> list[str]:
    args = [a for f in filters for a in ("-f", f)]
    r = dy.cli("events", "--since-seq", "0", "--until-seq", str(until), *args, timeout=30, check=True)
    return r.stdout.decode().splitlines()


def test_docker_event_names_filter_the_journal(dy: Instance) -> None:
    dy.cli("run", "-d", "--name", "w", "busybox", "sleep", "30", check=True)
    r = dy.cli("exec", "w", "sh", "-c", "exit 4")
    assert r.returncode == 4, r.stderr
    dy.cli("rm", "-f", "w", check=True)
    assert dy.cli("run", "--rm", "--name", "three", "busybox", "sh", "-c", "exit 3").returncode == 3
    with dy.client("events") as c:
        head = int(c.call("events.head", {})["seq"])

    died = _events(dy, head, "event=die")
    assert [(ln.split()[3], "exit_status=137" in ln or "exit_status=3" in ln) for ln in died] == [
        ("/tasks/exit", True),
        ("/tasks/exit", True),
    ], died
    assert "container_name=w" in died[0] and "container_name=three" in died[1]

    exec_died = _events(dy, head, "event=exec_die")
    assert len(exec_died) == 1 and "exit_status=4" in exec_died[0], exec_died

    destroyed = _events(dy, head, "type=container", "event=destroy")
    assert [ln.split()[3] for ln in destroyed] == ["/containers/delete", "/containers/delete"]

    started = _events(dy, head, "event=start", "container=three")
    assert [ln.split()[3] for ln in started] == ["/tasks/start"]

    images = _events(dy, head, "type=image")
    assert images and all(ln.split()[3].startswith("/images/") for ln in images)
    assert any("action=load" in ln for ln in _events(dy, head, "event=load"))

    task_topics = {ln.split()[3] for ln in _events(dy, head, "type=container")}
    assert {"/containers/create", "/tasks/start", "/tasks/exit", "/containers/delete"} <= task_topics
    assert _events(dy, head, "event=kill", "type=image") == []

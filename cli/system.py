"""System commands: ``up``, ``down``, ``status``, ``version``, ``events``."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from cli import output
from cli.connect import client, namespace
from common import endpoints, errors

__version__ = "0.1.0"


def _supervisor_status(timeout_s: float = 2.0) -> dict[str, Any] | None:
    c = client("supervisor", timeout_s=timeout_s)
    c.connect_timeout_s = min(c.connect_timeout_s, timeout_s)
    try:
        return c.call("supervisor.status", {})  # type: ignore[no-any-return]
    except errors.Unavailable:
        return None
    finally:
        c.close()


def _spawn_supervisor() -> None:
    from common import statefs

    state = Path(endpoints.state_dir())
    statefs.ensure_tmpfs(str(state))  # before the first file: only an empty directory is mounted over
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    project = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = project + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(logs / "supervisor.log", "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "services.supervisor"],
            env=env,
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )


def up(timeout: Annotated[float, typer.Option(help="seconds to wait for every service")] = 60.0) -> None:
    """Start every service (idempotent) and wait until each answers its health check."""
    if os.geteuid() != 0:
        output.fail("dockyard up must run as root (it mounts overlayfs and runs runc)")
    status = _supervisor_status(timeout_s=1.0)
    if status is None:
        _spawn_supervisor()
    deadline = time.monotonic() + timeout
    while True:
        status = _supervisor_status(timeout_s=2.0)
        if status is not None and all(s["state"] == "running" for s in status["services"]):
            break
        if time.monotonic() > deadline:
            state = endpoints.state_dir()
            if status is None:
                output.fail(f"the supervisor did not start; see {state}/logs/supervisor.log")
            bad = [s["name"] for s in status["services"] if s["state"] != "running"]
            output.fail(f"services not running after {timeout:.0f} s: {', '.join(bad)}; see {state}/logs/")
        time.sleep(0.1)
    _print_status(status)


def down(
    timeout: Annotated[float, typer.Option(help="seconds before a service that ignores SIGTERM is killed")] = 15.0,
) -> None:
    """Stop every service. Running containers keep running (their shims are not services)."""
    status = _supervisor_status(timeout_s=1.0)
    if status is None:
        output.line("dockyard is not running")
        return
    sup_pid = int(status["pid"])
    with client("supervisor", timeout_s=timeout * len(endpoints.SERVICES) + 10) as c:
        try:
            c.call("supervisor.stop", {"timeout_s": timeout})
        except errors.FailedPrecondition:
            pass
    for _ in range(200):
        if not _alive(sup_pid):
            break
        time.sleep(0.05)
    output.line("dockyard stopped")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _since(value: Any) -> str:
    if not value:
        return ""
    if isinstance(value, dt.datetime):
        secs = (dt.datetime.now(dt.UTC) - value).total_seconds()
        return f"{int(secs)}s ago" if secs < 120 else f"{int(secs // 60)}m ago"
    return str(value)


def _print_status(status: dict[str, Any]) -> None:
    output.table(
        ["SERVICE", "STATE", "PID", "RESTARTS", "STARTED", "LAST EXIT"],
        [
            [s["name"], s["state"], s["pid"] or "", s["restarts"], _since(s.get("started_at")), s.get("last_exit", "")]
            for s in status["services"]
        ],
    )


def status() -> None:
    """Show each service's state, pid and restart count."""
    st = _supervisor_status()
    if st is None:
        output.fail(
            f"Unavailable: supervisor not answering at {endpoints.control_endpoint('supervisor')} (run: dockyard up)"
        )
    _print_status(st)


def version() -> None:
    """Show the client version and each service's pid."""
    output.line(f"dockyard client {__version__}")
    for name in endpoints.SERVICES:
        c = client(name, timeout_s=2.0)
        try:
            h = c.call(f"{name}.health", {})
            output.line(f"{name:<10} running (pid {h['pid']})")
        except errors.DockyardError as exc:
            output.line(f"{name:<10} {output.error_text(exc)}")
        finally:
            c.close()


TIME_FORMS = (
    "unix seconds (1700000000, 1700000000.5), RFC 3339 (2026-11-30T10:00:00Z, 2026-11-30) or a duration (10m, 1h30m)"
)
"""What ``--since`` and ``--until`` take, as ``docker events`` does."""


def replay_bounds(
    since: str | None,
    until: str | None,
    since_seq: int | None,
    until_seq: int | None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """The ``events.replay`` fields of ``dockyard events``' four bounds (``common.api.events.ReplayRequest``).

    ``since``/``until`` are times as ``docker events`` takes them (``parse_time``) and become
    ``since_time`` (events at or after it) and ``until`` (events at or before it; a future time
    ends the follow then). ``since_seq``/``until_seq`` are journal sequence numbers (the second
    column of the plain output) and become ``since`` (events with ``seq > since_seq``) and
    ``until_seq`` (``seq <= until_seq``). An empty string is no bound. Durations count back
    from ``now`` (default: the clock).

    Raises InvalidArgument when a bound is given both ways, a time is not one (``parse_time``),
    or ``since`` is after ``until`` (as dockerd's ``GET /events``).
    """
    for option, value, seq_option, seq in (
        ("--since", since, "--since-seq", since_seq),
        ("--until", until, "--until-seq", until_seq),
    ):
        if value and seq is not None:
            raise errors.InvalidArgument(f"{option} and {seq_option} cannot be used together: give a time or a seq")
    now = now or dt.datetime.now(dt.UTC)
    body: dict[str, Any] = {}
    if since:
        body["since_time"] = parse_time("--since", since, now)
    if since_seq is not None:
        body["since"] = since_seq
    if until:
        body["until"] = parse_time("--until", until, now)
    if until_seq is not None:
        body["until_seq"] = until_seq
    if since and until and body["until"] < body["since_time"]:  # dockerd's getEvents refuses it too
        raise errors.InvalidArgument(f"`since` time ({since}) cannot be after `until` time ({until})")
    return body


def parse_time(option: str, value: str, now: dt.datetime) -> dt.datetime:
    """``value`` of ``option`` (``--since``, ``--until``) as an aware UTC datetime, read as the
    docker CLI reads it (``common.dockerfmt.parse_docker_time``): unix seconds (``1700000000``,
    ``1700000000.5``), RFC 3339 with or without a zone (local, as docker's) or its shorter forms
    (``2026-11-30T10:00``, ``2026-11-30``), or a Go duration before ``now`` (``10m``, ``1h30m``).

    Raises InvalidArgument naming the option, the value and the forms it takes (or the range
    the journal's times cover).
    """
    from common import dockerfmt
    from common.api.events import JOURNAL_TIME_MAX, JOURNAL_TIME_MIN

    try:
        when = dockerfmt.parse_docker_time(value, now, zone=now.astimezone().tzinfo or dt.UTC)
    except dockerfmt.FormatError:
        raise errors.InvalidArgument(f"invalid value {value!r} for {option}: use {TIME_FORMS}") from None
    if not JOURNAL_TIME_MIN <= when <= JOURNAL_TIME_MAX:
        raise errors.InvalidArgument(
            f"invalid value {value!r} for {option}: "
            f"the time must be between {JOURNAL_TIME_MIN:%Y-%m-%d} and {JOURNAL_TIME_MAX:%Y-%m-%d}"
        )
    return when


def _parse_filters(items: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """``-f key=value`` -> (the events service's filters, the Docker actions to keep).

    ``topic``, ``namespace``, ``container``, ``image``, ``label`` are the service's own.
    ``event`` takes Docker's action names (``die``, ``start``, ``exec_die``, ``tag`` ...):
    they become the topics they come from (``common.dockerfmt.event_topics``; unless
    ``topic`` is given too) and each envelope is then converted as the Docker API does
    (``dockerfmt.docker_event``) and kept only when its action is one asked for. ``type``
    takes Docker's types (``container`` covers container and task topics, ``image``) and
    Dockyard's kinds (``task``, ``snapshot``, ``content``).
    """
    from common import dockerfmt

    allowed = {"topic", "type", "namespace", "container", "image", "label", "event"}
    filters: dict[str, list[str]] = {}
    actions: list[str] = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in allowed:
            raise errors.InvalidArgument(f"invalid filter {item!r}: use key=value with key one of {sorted(allowed)}")
        if key == "event":
            actions.append(value)
        elif key == "type":
            filters.setdefault("type", []).extend(k for k in dockerfmt.event_kinds(value) if k not in filters["type"])
        else:
            filters.setdefault(key, []).append(value)
    if actions and "topic" not in filters:
        topics = filters.setdefault("topic", [])
        for action in actions:
            topics.extend(t for t in dockerfmt.event_topics(action) if t not in topics)
    return filters, actions


def _docker_action_in(env: dict[str, Any], actions: list[str]) -> bool:
    from common import dockerfmt

    ev = dockerfmt.docker_event(env)
    return ev is not None and dockerfmt.event_matches(ev, {"event": actions})


def events(
    since: Annotated[
        str | None,
        typer.Option(
            help="replay from this time: unix seconds, RFC 3339 (2026-11-30T10:00:00) or a duration ago (10m)"
        ),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="stop at this time: unix seconds, RFC 3339 or a duration ago")
    ] = None,
    since_seq: Annotated[
        int | None,
        typer.Option("--since-seq", min=0, help="replay the journal after this sequence number (the second column)"),
    ] = None,
    until_seq: Annotated[
        int | None, typer.Option("--until-seq", min=0, help="stop after the event with this sequence number")
    ] = None,
    filter_: Annotated[
        list[str],
        typer.Option(
            "--filter",
            "-f",
            help="key=value: event (docker's: die, start...), type, topic, namespace, container, image, label",
        ),
    ] = [],  # noqa: B006
    as_json: Annotated[bool, typer.Option("--json", help="one JSON envelope per line")] = False,
) -> None:
    """Print live events; with --since (a time, as docker events takes it) or --since-seq (a
    sequence number: the second column), replay the journal from that point first."""
    body = replay_bounds(since, until, since_seq, until_seq)
    body["follow"] = True
    filters, actions = _parse_filters(filter_)
    if "namespace" not in filters and namespace() != "default":
        filters["namespace"] = [namespace()]
    body["filters"] = filters
    c = client("events", timeout_s=None)
    if "since" not in body and "since_time" not in body:  # live only: start at the journal's head
        try:
            body["since"] = int(c.call("events.head", {}, timeout_s=10)["seq"])
        except errors.DockyardError as exc:
            output.fail(exc)
    try:
        for env in _follow(c, body):
            if actions and not _docker_action_in(env, actions):
                continue
            if as_json:
                output.line(json.dumps(env, default=_json_default, separators=(",", ":")))
            else:
                ts = env["timestamp"].isoformat().replace("+00:00", "Z")
                attrs = " ".join(f"{k}={_fmt(v)}" for k, v in sorted(env["event"].items()))
                output.line(f"{ts} {env['seq']} {env['namespace']} {env['topic']} {attrs}".rstrip())
    except KeyboardInterrupt:
        pass


def _follow(c: Any, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``events.replay`` that resumes after the last envelope when the events service restarts
    (``common.events.follow``, blocking); exits with the error once it stays down."""
    from common.events import RESUME_BACKOFF_S, RESUME_WINDOW_S, resume_request

    last: int | None = None
    failing_since: float | None = None
    while True:
        try:
            for env in c.stream("events.replay", resume_request(body, last)):
                failing_since = None
                if isinstance(env.get("seq"), int):
                    last = env["seq"]
                yield env
            return
        except errors.Unavailable as exc:
            now = time.monotonic()
            failing_since = now if failing_since is None else failing_since
            if now - failing_since >= RESUME_WINDOW_S:
                output.fail(exc)
            time.sleep(RESUME_BACKOFF_S)
        except errors.DockyardError as exc:
            output.fail(exc)


def _fmt(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=_json_default, separators=(",", ":"))
    return str(value)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, dt.datetime):
        return obj.isoformat().replace("+00:00", "Z")
    if isinstance(obj, bytes):
        return obj.decode(errors="replace")
    raise TypeError(type(obj).__name__)


def register(app: typer.Typer) -> None:
    """Add the system commands to ``app``."""
    app.command()(up)
    app.command()(down)
    app.command()(status)
    app.command()(version)
    app.command()(events)

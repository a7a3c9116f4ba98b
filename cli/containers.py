"""Container commands: ``run``, ``create``, ``start``, ``ps``, ``logs``, ``stop``, ``kill``,
``rm``, ``wait``, ``inspect`` ... as Docker-style short verbs and under ``container``.

This module declares the commands (typer: names, options, help); what they do lives
in ``cli.runner``, which the hot path (``cli.hot``) shares, so ``dockyard run ...``
behaves the same whichever parser read it. ``run`` follows ``docker run``
(docker-api.md section 4); see ``cli.runner``.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from typing import Annotated, Any

import typer

from cli import cp as cp_mod
from cli import files, output, resume, runner
from cli.connect import client
from common import errors

EXIT_ENGINE = output.EXIT_ENGINE_ERROR

# -- options shared by run and create ---------------------------------------------------------------

Name = Annotated[str | None, typer.Option("--name", help="assign a name to the container")]
Env = Annotated[list[str], typer.Option("-e", "--env", help="set an environment variable (KEY=VALUE)")]
EnvFile = Annotated[list[str], typer.Option("--env-file", help="read environment variables from a file")]
Entrypoint = Annotated[str | None, typer.Option("--entrypoint", help="override the image's entrypoint ('' = none)")]
Workdir = Annotated[str | None, typer.Option("-w", "--workdir", help="working directory inside the container")]
User = Annotated[str | None, typer.Option("-u", "--user", help="user: name|uid[:group|gid]")]
Label = Annotated[list[str], typer.Option("-l", "--label", help="set a label (KEY=VALUE)")]
Hostname = Annotated[str | None, typer.Option("-h", "--hostname", help="container host name")]
Rm = Annotated[bool, typer.Option("--rm", help="remove the container when it exits")]
Tty = Annotated[bool, typer.Option("-t", "--tty", help="allocate a pseudo-TTY")]
Interactive = Annotated[bool, typer.Option("-i", "--interactive", help="keep stdin open")]
Network = Annotated[str, typer.Option("--network", "--net", help="none (default; bridge maps to it) or host")]
ReadOnly = Annotated[bool, typer.Option("--read-only", help="mount the root filesystem read-only")]
Volume = Annotated[list[str], typer.Option("-v", "--volume", help="bind mount or volume: SRC:DST[:ro]")]
Tmpfs = Annotated[list[str], typer.Option("--tmpfs", help="tmpfs mount: DST[:opts]")]
MountOpt = Annotated[list[str], typer.Option("--mount", help="type=bind|volume|tmpfs,source=..,target=..[,readonly]")]
Init = Annotated[bool, typer.Option("--init", help="run an init (tini) as PID 1 that reaps zombies")]
Restart = Annotated[str, typer.Option("--restart", help="no | always | on-failure[:N] | unless-stopped")]
Memory = Annotated[str | None, typer.Option("-m", "--memory", help="memory limit (e.g. 32m)")]
MemorySwap = Annotated[str | None, typer.Option("--memory-swap", help="memory+swap limit; -1 = unlimited")]
Cpus = Annotated[float | None, typer.Option("--cpus", help="number of CPUs")]
CpuShares = Annotated[int | None, typer.Option("-c", "--cpu-shares", help="CPU shares (relative weight)")]
PidsLimit = Annotated[int | None, typer.Option("--pids-limit", help="max processes (-1 = unlimited)")]
CapAdd = Annotated[list[str], typer.Option("--cap-add", help="add a Linux capability")]
CapDrop = Annotated[list[str], typer.Option("--cap-drop", help="drop a Linux capability")]
Privileged = Annotated[bool, typer.Option("--privileged", help="give extended privileges")]
SecurityOpt = Annotated[list[str], typer.Option("--security-opt", help="e.g. no-new-privileges")]
StopSignal = Annotated[str | None, typer.Option("--stop-signal", help="signal to stop the container")]
StopTimeout = Annotated[int | None, typer.Option("--stop-timeout", help="seconds to wait before killing")]
LogOpt = Annotated[list[str], typer.Option("--log-opt", help="json-file: max-size=10m, max-file=3")]
Runtime = Annotated[str | None, typer.Option("--runtime", help="OCI runtime: runc or crun")]
GroupAdd = Annotated[list[str], typer.Option("--group-add", help="additional group")]


def run(
    image: Annotated[str, typer.Argument(help="image reference")],
    cmd: Annotated[list[str] | None, typer.Argument(help="command and arguments")] = None,
    detach: Annotated[bool, typer.Option("-d", "--detach", help="run in the background, print the id")] = False,
    name: Name = None,
    rm: Rm = False,
    env: Env = [],  # noqa: B006 - typer reads the default
    env_file: EnvFile = [],  # noqa: B006
    entrypoint: Entrypoint = None,
    workdir: Workdir = None,
    user: User = None,
    label: Label = [],  # noqa: B006
    hostname: Hostname = None,
    tty: Tty = False,
    interactive: Interactive = False,
    network: Network = "none",
    read_only: ReadOnly = False,
    volume: Volume = [],  # noqa: B006
    tmpfs: Tmpfs = [],  # noqa: B006
    mount: MountOpt = [],  # noqa: B006
    init: Init = False,
    restart: Restart = "no",
    memory: Memory = None,
    memory_swap: MemorySwap = None,
    cpus: Cpus = None,
    cpu_shares: CpuShares = None,
    pids_limit: PidsLimit = None,
    cap_add: CapAdd = [],  # noqa: B006
    cap_drop: CapDrop = [],  # noqa: B006
    privileged: Privileged = False,
    security_opt: SecurityOpt = [],  # noqa: B006
    stop_signal: StopSignal = None,
    stop_timeout: StopTimeout = None,
    log_opt: LogOpt = [],  # noqa: B006
    runtime: Runtime = None,
    group_add: GroupAdd = [],  # noqa: B006
) -> None:
    """Create and start a container; stream its output and exit with its exit code."""
    opts = dict(locals())
    opts.pop("image")
    opts.pop("cmd")
    opts.pop("detach")
    raise typer.Exit(runner.run(image, cmd, detach=detach, **opts))


def create(
    image: Annotated[str, typer.Argument(help="image reference")],
    cmd: Annotated[list[str] | None, typer.Argument(help="command and arguments")] = None,
    name: Name = None,
    rm: Rm = False,
    env: Env = [],  # noqa: B006
    env_file: EnvFile = [],  # noqa: B006
    entrypoint: Entrypoint = None,
    workdir: Workdir = None,
    user: User = None,
    label: Label = [],  # noqa: B006
    hostname: Hostname = None,
    tty: Tty = False,
    interactive: Interactive = False,
    network: Network = "none",
    read_only: ReadOnly = False,
    volume: Volume = [],  # noqa: B006
    tmpfs: Tmpfs = [],  # noqa: B006
    mount: MountOpt = [],  # noqa: B006
    init: Init = False,
    restart: Restart = "no",
    memory: Memory = None,
    memory_swap: MemorySwap = None,
    cpus: Cpus = None,
    cpu_shares: CpuShares = None,
    pids_limit: PidsLimit = None,
    cap_add: CapAdd = [],  # noqa: B006
    cap_drop: CapDrop = [],  # noqa: B006
    privileged: Privileged = False,
    security_opt: SecurityOpt = [],  # noqa: B006
    stop_signal: StopSignal = None,
    stop_timeout: StopTimeout = None,
    log_opt: LogOpt = [],  # noqa: B006
    runtime: Runtime = None,
    group_add: GroupAdd = [],  # noqa: B006
) -> None:
    """Create a container (nothing runs until ``start``); print its id."""
    opts = dict(locals())
    opts.pop("image")
    opts.pop("cmd")
    try:
        created = runner.create(runner.create_request(image, cmd, **opts))
    except errors.DockyardError as exc:
        output.fail(exc, EXIT_ENGINE)
    output.line(created["id"])


# -- lifecycle verbs ----------------------------------------------------------------------------------------------


def _each(ids: list[str], method: str, body: dict[str, Any], *, timeout_s: float | None = 60) -> None:
    """Call ``method`` for every container (see ``runner.each``); exit 1 if any failed."""
    code = runner.each(ids, method, body, timeout_s=timeout_s)
    if code:
        raise typer.Exit(code)


def start(
    containers: Annotated[list[str], typer.Argument(help="containers (id, prefix or name)")],
    attach: Annotated[bool, typer.Option("-a", "--attach", help="attach output and exit with its code")] = False,
    interactive: Interactive = False,
) -> None:
    """Start one or more stopped containers."""
    if attach:
        if len(containers) != 1:
            output.fail("you cannot start and attach multiple containers at once")
        raise typer.Exit(runner.start_attached(containers[0], interactive=interactive))
    _each(containers, "execution.start", {})


def stop(
    containers: Annotated[list[str], typer.Argument(help="containers")],
    time_s: Annotated[int | None, typer.Option("-t", "--time", "--timeout", help="seconds before SIGKILL")] = None,
    sig: Annotated[str | None, typer.Option("-s", "--signal", help="signal to send first")] = None,
) -> None:
    """Stop running containers (stop signal, then SIGKILL after the timeout)."""
    _each(containers, "execution.stop", runner.stop_body(time_s, sig), timeout_s=None)


def restart(
    containers: Annotated[list[str], typer.Argument(help="containers")],
    time_s: Annotated[int | None, typer.Option("-t", "--time", "--timeout", help="seconds before SIGKILL")] = None,
) -> None:
    """Restart containers (stop, then start)."""
    body: dict[str, Any] = {} if time_s is None else {"timeout_s": time_s}
    _each(containers, "execution.restart", body, timeout_s=None)


def kill(
    containers: Annotated[list[str], typer.Argument(help="containers")],
    sig: Annotated[str, typer.Option("-s", "--signal", help="signal (name or number)")] = "SIGKILL",
) -> None:
    """Send a signal (default SIGKILL) to running containers."""
    _each(containers, "execution.kill", {"signal": sig})


def rm(
    containers: Annotated[list[str], typer.Argument(help="containers")],
    force: Annotated[bool, typer.Option("-f", "--force", help="kill a running container first")] = False,
    volumes: Annotated[bool, typer.Option("-v", "--volumes", help="remove anonymous volumes too")] = False,
) -> None:
    """Remove containers (a running one only with -f)."""
    _each(containers, "execution.remove", {"force": force, "volumes": volumes}, timeout_s=120)


def pause(containers: Annotated[list[str], typer.Argument(help="containers")]) -> None:
    """Pause (freeze) every process of the containers."""
    _each(containers, "execution.pause", {})


def unpause(containers: Annotated[list[str], typer.Argument(help="containers")]) -> None:
    """Resume paused containers."""
    _each(containers, "execution.unpause", {})


def wait(containers: Annotated[list[str], typer.Argument(help="containers")]) -> None:
    """Block until the containers stop; print each exit code. A restart of the execution
    service meanwhile is waited out (``cli.resume.wait_exit``)."""
    since_ns = time.time_ns()
    try:
        for ref in containers:
            reply = resume.wait_exit(ref, since_ns)
            output.line(str(reply["exit_code"]))
    except errors.DockyardError as exc:
        output.fail(exc)


# -- observation -----------------------------------------------------------------------------------------------------


def ps(
    all_: Annotated[bool, typer.Option("-a", "--all", help="show all containers (default: running)")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="only ids")] = False,
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="full ids and commands")] = False,
    filter_: Annotated[
        list[str], typer.Option("-f", "--filter", help="key=value: id, name, label, status, ancestor, exited")
    ] = [],  # noqa: B006
    last: Annotated[int | None, typer.Option("-n", "--last", help="show the n last created containers")] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="table, json, 'table TEMPLATE' or a Go template: '{{.Names}}'")
    ] = None,
    size: Annotated[
        bool, typer.Option("-s", "--size", help="total file sizes (also when --format uses .Size)")
    ] = False,
) -> None:
    """List containers."""
    runner.ps(all_=all_, quiet=quiet, no_trunc=no_trunc, filter_=filter_, last=last, fmt=fmt, size=size)


def _parse_since(option: str, value: str | None) -> str | None:
    """``--since``/``--until`` of ``logs`` as the docker CLI reads them (``cli.system.parse_time``'s
    forms) -> an ISO 8601 UTC time for ``execution.logs``; a bad value fails in one line. An
    ``--until`` of ``0`` is no bound, as moby's daemon/logs.go reads it (``docker logs --until 0``)."""
    if not value or (option == "--until" and value.strip() == "0"):
        return None
    from cli.system import TIME_FORMS
    from common import dockerfmt

    now = dt.datetime.now(dt.UTC)
    try:
        return dockerfmt.parse_docker_time(value.strip(), now, zone=now.astimezone().tzinfo or dt.UTC).isoformat()
    except dockerfmt.FormatError:
        output.fail(f"invalid value {value!r} for {option}: use {TIME_FORMS}")


def logs(
    container: Annotated[str, typer.Argument(help="container")],
    follow: Annotated[bool, typer.Option("-f", "--follow", help="keep streaming new output")] = False,
    tail: Annotated[str, typer.Option("-n", "--tail", help="number of lines from the end, or 'all'")] = "all",
    since: Annotated[
        str | None, typer.Option("--since", help="unix time, RFC 3339 time or Go duration before now (10m, 1h30m)")
    ] = None,
    until: Annotated[str | None, typer.Option("--until", help="unix time, RFC 3339 time or Go duration")] = None,
    timestamps: Annotated[bool, typer.Option("-t", "--timestamps", help="prefix each line with its time")] = False,
) -> None:
    """Print a container's output (stdout and stderr, as written); a restart of the execution
    service meanwhile is ridden through (``cli.resume.follow_logs``)."""
    body: dict[str, Any] = {"id": container, "follow": follow, "timestamps": timestamps, "stamp_inline": True}
    if tail != "all":
        if not tail.lstrip("-").isdigit():
            output.fail(f"invalid tail {tail!r}")
        body["tail"] = int(tail)
    if since:
        body["since"] = _parse_since("--since", since)
    if until:
        body["until"] = _parse_since("--until", until)
    resume.follow_logs(body)  # timestamps come written into "d"; rides through a restart of the service


def inspect(
    objects: Annotated[list[str], typer.Argument(help="containers or images (names or ids)")],
    fmt: Annotated[str | None, typer.Option("-f", "--format", help="Go template, e.g. '{{.State.Status}}'")] = None,
) -> None:
    """Show containers' configuration and state as JSON; a name no container has is looked up
    as an image (``docker inspect``). Prints what it found; exits 1 if anything was not found.
    With ``--format``, each object is rendered with the template (docker's field names, as
    the JSON shows them) instead, one per line."""
    from cli.images import _docker_inspect

    render = None
    if fmt:
        from cli import formatter

        try:
            render = formatter.inspect_renderer(fmt)
        except formatter.FormatError as exc:
            output.fail(str(exc))
    ex = client("execution", timeout_s=30)
    im = None
    out = []
    missing: errors.DockyardError | None = None
    try:
        for ref in objects:
            try:
                out.append(docker_inspect(ex.call("execution.inspect", {"id": ref})))
                continue
            except errors.NotFound:
                pass
            im = im or client("image", timeout_s=30)
            try:
                out.append(_docker_inspect(im.call("image.get", {"ref": ref})))
            except (errors.NotFound, errors.InvalidArgument):
                missing = errors.NotFound(f"no such object: {ref}")
    except errors.DockyardError as exc:
        output.fail(exc)
    finally:
        ex.close()
        if im is not None:
            im.close()
    if render is not None:
        _print_rendered(render, out)
    else:
        output.as_json(out)
    if missing is not None:
        output.fail(missing)


def _print_rendered(render: Any, objects: list[dict[str, Any]]) -> None:
    """Print each object through ``render`` (``formatter.inspect_renderer``); a failure is one
    error line after what rendered before it, as ``docker inspect -f`` does."""
    from cli import formatter

    for obj in objects:
        try:
            text = render(obj)
        except formatter.FormatError as exc:
            output.fail(str(exc))
        output.text(text)


def attach(
    container: Annotated[str, typer.Argument(help="container")],
    no_stdin: Annotated[bool, typer.Option("--no-stdin", help="do not attach stdin")] = False,
) -> None:
    """Attach to a running container's output (and stdin); exit with its exit code.

    A restart of the execution service meanwhile is ridden through (``cli.resume``); the
    output resumes from the log past the time of the attach request, so what the container
    wrote in the milliseconds between that request and the subscription may show twice."""
    ex = client("execution", timeout_s=30)
    try:
        info = ex.call("execution.inspect", {"id": container})
    except errors.DockyardError as exc:
        output.fail(exc)
    finally:
        ex.close()
    if not info["state"]["running"]:
        output.fail("you cannot attach to a stopped container, start it first")
    stdin = bool(info["config"].get("open_stdin")) and not no_stdin
    waiter = client("execution", timeout_s=None)
    attacher = client("execution", timeout_s=None)
    try:
        wait_call = waiter.start("execution.wait", {"id": info["id"], "condition": "next-exit"})
        since_ns = time.time_ns()  # see cli.resume: output from here on is in the log past this time
        att = attacher.start("execution.attach", {"id": info["id"], "stdin": stdin})
        att.next_frame()
        tty = bool(info["config"].get("tty"))
        printed: dict[int, int] = {}
        with (
            runner.SignalProxy(info["id"]),
            runner.RawTerminal(tty and stdin),
            runner.Resizer(tty, "execution.resize", {"id": info["id"]}),
        ):
            try:
                last = runner.pump(att, stdin, printed)
            except errors.Unavailable as exc:
                if not resume.lost_contact(att, exc):
                    raise
                since = resume.rfc3339(since_ns, 6)
                raise typer.Exit(resume.follow(info["id"], printed, exc, since=since, stdin=stdin)) from None
        code = 0 if last.get("detached") else int(wait_call.result().get("exit_code", 0))
    except errors.DockyardError as exc:
        output.fail(exc)
    finally:
        waiter.close()
        attacher.close()
    raise typer.Exit(code)


# -- exec, top, stats, update -----------------------------------------------------------------------------------------


def exec_(
    container: Annotated[str, typer.Argument(help="container")],
    cmd: Annotated[list[str], typer.Argument(help="command and arguments")],
    detach: Annotated[bool, typer.Option("-d", "--detach", help="run in the background")] = False,
    interactive: Interactive = False,
    tty: Tty = False,
    env: Env = [],  # noqa: B006
    user: User = None,
    workdir: Workdir = None,
    privileged: Privileged = False,
    detach_keys: Annotated[str, typer.Option("--detach-keys", help="e.g. ctrl-p,ctrl-q")] = "",
) -> None:
    """Run a command in a running container; exit with its exit code."""
    opts = dict(locals())
    opts.pop("container")
    opts.pop("cmd")
    raise typer.Exit(runner.exec_(container, list(cmd), **opts))


def top(
    container: Annotated[str, typer.Argument(help="container")],
    ps_args: Annotated[list[str] | None, typer.Argument(help="ps options (default -ef)")] = None,
) -> None:
    """Show the processes of a container (the host's ps)."""
    ex = client("execution", timeout_s=30)
    try:
        reply = ex.call("execution.top", {"id": container, "ps_args": " ".join(ps_args or ["-ef"])})
    except errors.DockyardError as exc:
        output.fail(exc)
    finally:
        ex.close()
    output.table(reply["titles"], reply["processes"])


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.4g}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1024
    return f"{n}B"


def _dsize(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.3g}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1000
    return f"{n}B"


def _stats_row(st: dict[str, Any], no_trunc: bool) -> list[str]:
    return [
        st["id"] if no_trunc else st["id"][:12],
        st["name"],
        f"{st['cpu_percent']:.2f}%",
        f"{_size(st['memory_usage'])} / {_size(st['memory_limit'])}",
        f"{st['memory_percent']:.2f}%",
        f"{_dsize(st['net_rx'])} / {_dsize(st['net_tx'])}",
        f"{_dsize(st['block_read'])} / {_dsize(st['block_write'])}",
        str(st["pids"]),
    ]


_STATS_HEADERS = ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O", "BLOCK I/O", "PIDS"]


def stats(
    containers: Annotated[list[str] | None, typer.Argument(help="containers (default: all running)")] = None,
    no_stream: Annotated[bool, typer.Option("--no-stream", help="print one sample and exit")] = False,
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="full ids")] = False,
) -> None:
    """Live resource usage of containers (CPU %, memory, network and block I/O, pids)."""
    ex = client("execution", timeout_s=30)
    try:
        if not containers:
            containers = [c["id"] for c in ex.call("execution.list", {"all": False})["containers"]]
    except errors.DockyardError as exc:
        output.fail(exc)
    finally:
        ex.close()
    clients = [client("execution", timeout_s=None) for _ in containers]
    try:
        calls = [
            c.start("execution.stats", {"id": ref, "stream": not no_stream})
            for c, ref in zip(clients, containers, strict=True)
        ]
        latest: dict[int, dict[str, Any]] = {}
        while True:
            for i, call in enumerate(calls):
                if call.done:
                    continue
                more, body = call.next_frame()
                if more and body is not None:
                    latest[i] = body
            if not no_stream and sys.stdout.isatty():
                output.raw(b"\x1b[2J\x1b[H")
            output.table(_STATS_HEADERS, [_stats_row(latest[i], no_trunc) for i in sorted(latest)])
            if no_stream or all(c.done for c in calls):
                return
    except errors.DockyardError as exc:
        output.fail(exc)
    except KeyboardInterrupt:
        return
    finally:
        for c in clients:
            c.close()


def update(
    containers: Annotated[list[str], typer.Argument(help="containers")],
    memory: Memory = None,
    memory_swap: MemorySwap = None,
    cpus: Cpus = None,
    cpu_shares: CpuShares = None,
    pids_limit: PidsLimit = None,
    restart: Annotated[str | None, typer.Option("--restart", help="new restart policy")] = None,
) -> None:
    """Change the resources (and restart policy) of containers, running ones included."""
    resources: dict[str, Any] = {}
    if memory:
        resources["memory"] = runner.parse_bytes(memory, "memory")
    if memory_swap:
        resources["memory_swap"] = runner.parse_bytes(memory_swap, "memory-swap")
    if cpus is not None:
        resources["nano_cpus"] = runner.nano_cpus(cpus)
    if cpu_shares is not None:
        resources["cpu_shares"] = cpu_shares
    if pids_limit is not None:
        resources["pids_limit"] = pids_limit
    body: dict[str, Any] = {"resources": runner.checked_resources(resources, update=True)}
    if restart:
        body["restart_policy"] = runner.restart_policy(restart)
    _each(containers, "execution.update", body)


# -- docker-style inspect --------------------------------------------------------------------------------------------


def docker_inspect(c: dict[str, Any]) -> dict[str, Any]:
    """A container in the shape ``docker inspect`` prints (ContainerJSON): the gateway's own."""
    from common import dockerfmt

    return dockerfmt.container_inspect(c)


def volume_ls(quiet: Annotated[bool, typer.Option("-q", "--quiet", help="only names")] = False) -> None:
    """List volumes."""
    ex = client("execution", timeout_s=30)
    try:
        vols = ex.call("execution.volume_list", {})["volumes"]
    except errors.DockyardError as exc:
        output.fail(exc)
    finally:
        ex.close()
    if quiet:
        for v in vols:
            output.line(v["name"])
        return
    output.table(["DRIVER", "VOLUME NAME"], [[v["driver"], v["name"]] for v in vols])


def volume_rm(
    names: Annotated[list[str], typer.Argument(help="volumes")],
    force: Annotated[bool, typer.Option("-f", "--force", help="remove even if in use")] = False,
) -> None:
    """Remove volumes (not while a container uses them)."""
    ex = client("execution", timeout_s=60)
    failed = False
    try:
        for name in names:
            try:
                ex.call("execution.volume_remove", {"name": name, "force": force})
                output.line(name)
            except errors.DockyardError as exc:
                failed = True
                sys.stderr.write(f"error: {output.error_text(exc)}\n")
    finally:
        ex.close()
    if failed:
        raise typer.Exit(1)


def volume_create(name: Annotated[str, typer.Argument(help="volume name")] = "") -> None:
    """Create a volume (a random name if none is given)."""
    ex = client("execution", timeout_s=30)
    try:
        output.line(ex.call("execution.volume_create", {"name": name})["name"])
    except errors.DockyardError as exc:
        output.fail(exc)
    finally:
        ex.close()


def volume_inspect(names: Annotated[list[str], typer.Argument(help="volumes")]) -> None:
    """Show volumes as JSON."""
    ex = client("execution", timeout_s=30)
    try:
        output.as_json([ex.call("execution.volume_inspect", {"name": n}) for n in names])
    except errors.DockyardError as exc:
        output.fail(exc)
    finally:
        ex.close()


def volume_prune(
    all_: Annotated[bool, typer.Option("--all", "-a", help="named volumes too, not only anonymous ones")] = False,
) -> None:
    """Remove the anonymous volumes no container uses (with -a, every unused volume)."""
    ex = client("execution", timeout_s=120)
    try:
        for name in ex.call("execution.volume_prune", {"all": all_})["removed"]:
            output.line(name)
    except errors.DockyardError as exc:
        output.fail(exc)
    finally:
        ex.close()


# -- wiring ------------------------------------------------------------------------------------------------------------

_RUN_SETTINGS = {"allow_interspersed_args": False}


def commit(
    container: Annotated[str, typer.Argument(help="container")],
    repository: Annotated[
        str | None, typer.Argument(metavar="[REPOSITORY[:TAG]]", help="name of the new image")
    ] = None,
    message: Annotated[str, typer.Option("--message", "-m", help="commit message")] = "",
    author: Annotated[str, typer.Option("--author", "-a", help="author")] = "",
    change: Annotated[list[str] | None, typer.Option("--change", "-c", help="Dockerfile instruction")] = None,
    pause: Annotated[bool, typer.Option("--pause/--no-pause", "-p", help="pause the container meanwhile")] = True,
) -> None:
    """Create a new image from a container's changes; print its id."""
    ex = client("execution", timeout_s=600)
    try:
        reply = ex.call(
            "execution.commit",
            {
                "id": container,
                "ref": repository or "",
                "comment": message,
                "author": author,
                "changes": change or [],
                "pause": pause,
            },
        )
    except errors.DockyardError as exc:
        output.fail(exc)
    finally:
        ex.close()
    output.line(str(reply["id"]))


def export(
    container: Annotated[str, typer.Argument(help="container")],
    out: Annotated[str | None, typer.Option("--output", "-o", help="write to this file instead of stdout")] = None,
) -> None:
    """Write a container's root file system as a tar archive (to stdout or -o FILE)."""
    if out is None and sys.stdout.isatty():
        output.fail("refusing to write a tar to a terminal: redirect stdout or use -o FILE")
    ex = client("execution", timeout_s=None)
    try:
        if out:
            with files.atomic_output(out) as f:
                for chunk in ex.stream("execution.export", {"id": container}):
                    f.write(chunk)
        else:
            for chunk in ex.stream("execution.export", {"id": container}):
                output.raw(chunk)
    except errors.DockyardError as exc:
        output.fail(exc)
    finally:
        ex.close()


def register(app: typer.Typer) -> None:
    """Add the container commands to ``app``: short verbs and the ``container`` sub-app."""
    container_app = typer.Typer(help="Manage containers.", no_args_is_help=True)
    for target in (app, container_app):
        target.command("run", context_settings=_RUN_SETTINGS)(run)
        target.command("create", context_settings=_RUN_SETTINGS)(create)
        target.command("start")(start)
        target.command("stop")(stop)
        target.command("restart")(restart)
        target.command("kill")(kill)
        target.command("rm")(rm)
        target.command("pause")(pause)
        target.command("unpause")(unpause)
        target.command("wait")(wait)
        target.command("logs")(logs)
        target.command("attach")(attach)
        target.command("exec", context_settings=_RUN_SETTINGS)(exec_)
        target.command("top", context_settings=_RUN_SETTINGS)(top)
        target.command("stats")(stats)
        target.command("update")(update)
        target.command("commit")(commit)
        target.command("export")(export)
        target.command("cp")(cp_mod.cp)
    app.command("ps")(ps)
    container_app.command("ls")(ps)
    container_app.command("ps")(ps)
    container_app.command("inspect")(inspect)
    app.command("inspect")(inspect)
    app.add_typer(container_app, name="container")
    volume_app = typer.Typer(help="Manage volumes.", no_args_is_help=True)
    volume_app.command("ls")(volume_ls)
    volume_app.command("list", hidden=True)(volume_ls)
    volume_app.command("rm")(volume_rm)
    volume_app.command("create")(volume_create)
    volume_app.command("inspect")(volume_inspect)
    volume_app.command("prune")(volume_prune)
    app.add_typer(volume_app, name="volume")

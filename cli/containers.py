"""Container commands: ``run``, ``create``, ``start``, ``ps``, ``logs``, ``stop``, ``kill``,
``rm``, ``wait``, ``inspect`` ... as Docker-style short verbs and under ``container``.

``run`` follows ``docker run`` (docker-api.md section 4): create (pulling the image
first if it is missing), register the wait, attach, start, stream the output byte for
byte, exit with the container's exit code; 125 when the engine failed, 126/127 when
the command could not be run. Signals the CLI receives are forwarded to the container.

No ``from __future__ import annotations`` here: typer reads every command's signature
at each invocation, and real annotation objects save it ~70 ms of string evaluation.
"""

import contextlib
import datetime as dt
import json
import os
import select
import signal
import sys
from typing import Annotated, Any

import typer

from cli import output
from cli.connect import client
from common import errors

EXIT_ENGINE = output.EXIT_ENGINE_ERROR

# -- request building ---------------------------------------------------------------------------


def _parse_bytes(value: str | None, what: str) -> int | None:
    if value is None or value == "":
        return None
    v = value.strip().lower()
    if v == "-1":
        return -1
    units = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
    if v.endswith("b") and len(v) > 1 and v[-2] in units:
        v = v[:-1]
    mult = units.get(v[-1], 0)
    try:
        return int(float(v[:-1] if mult else v) * (mult or 1))
    except ValueError:
        output.fail(f"invalid {what} {value!r}", EXIT_ENGINE)


def _env_list(env: list[str], env_file: list[str]) -> list[str]:
    out = []
    for path in env_file:
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if line and not line.startswith("#"):
                        out.append(line)
        except OSError as exc:
            output.fail(f"cannot read env file {path}: {exc.strerror}", EXIT_ENGINE)
    out += env
    resolved = []
    for entry in out:
        if "=" not in entry:
            if entry in os.environ:  # docker run -e NAME takes the value from the client
                resolved.append(f"{entry}={os.environ[entry]}")
            continue
        resolved.append(entry)
    return resolved


def _labels(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values:
        k, _, val = v.partition("=")
        out[k] = val
    return out


def _volume_mounts(volumes: list[str], tmpfs: list[str], mounts: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for v in volumes:
        parts = v.split(":")
        if len(parts) == 1:
            out.append({"type": "volume", "source": "", "target": parts[0]})
            continue
        source, target = parts[0], parts[1]
        opts = parts[2].split(",") if len(parts) > 2 else []
        kind = "bind" if source.startswith("/") or source.startswith(".") else "volume"
        if kind == "bind":
            source = os.path.abspath(source)
        out.append({"type": kind, "source": source, "target": target, "read_only": "ro" in opts})
    for t in tmpfs:
        target, _, tmpfs_opts = t.partition(":")
        out.append({"type": "tmpfs", "target": target, "options": [o for o in tmpfs_opts.split(",") if o]})
    for m in mounts:
        fields: dict[str, str] = {}
        for part in m.split(","):
            k, sep, val = part.partition("=")
            fields[k.strip()] = val.strip() if sep else "true"
        kind = fields.get("type", "volume")
        target = fields.get("target") or fields.get("destination") or fields.get("dst") or ""
        source = fields.get("source") or fields.get("src") or ""
        ro = fields.get("readonly", fields.get("ro", "false")) in ("true", "1")
        entry: dict[str, Any] = {"type": kind, "source": source, "target": target, "read_only": ro}
        if kind == "tmpfs":
            opts = []
            if "tmpfs-size" in fields:
                opts.append(f"size={fields['tmpfs-size']}")
            if "tmpfs-mode" in fields:
                opts.append(f"mode={fields['tmpfs-mode']}")
            entry["options"] = opts
        out.append(entry)
    return out


def _restart_policy(value: str) -> dict[str, Any]:
    name, _, count = value.partition(":")
    if name not in ("no", "always", "on-failure", "unless-stopped"):
        output.fail(f"invalid restart policy {value!r}", EXIT_ENGINE)
    policy: dict[str, Any] = {"name": name}
    if count:
        if name != "on-failure" or not count.isdigit():
            output.fail(f"invalid restart policy {value!r}: only on-failure takes a retry count", EXIT_ENGINE)
        policy["maximum_retry_count"] = int(count)
    return policy


def _console_size() -> list[int] | None:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
        return [size.lines, size.columns]
    except OSError:
        return None


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
Network = Annotated[str, typer.Option("--network", "--net", help="none (default) or host")]
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


def _create_request(image: str, cmd: list[str] | None, **o: Any) -> dict[str, Any]:
    req: dict[str, Any] = {"image": image}
    if cmd:
        req["cmd"] = list(cmd)
    if o.get("name"):
        req["name"] = o["name"]
    if o.get("entrypoint") is not None:
        req["entrypoint"] = [o["entrypoint"]] if o["entrypoint"] else []
    env = _env_list(o.get("env") or [], o.get("env_file") or [])
    if env:
        req["env"] = env
    for key in ("workdir", "user", "hostname"):
        if o.get(key):
            req[{"workdir": "working_dir"}.get(key, key)] = o[key]
    if o.get("label"):
        req["labels"] = _labels(o["label"])
    if o.get("rm"):
        req["auto_remove"] = True
    if o.get("tty"):
        req["tty"] = True
        size = _console_size()
        if size:
            req["console_size"] = size
    if o.get("interactive"):
        req["open_stdin"] = True
        req["stdin_once"] = True
    if o.get("network") and o["network"] != "none":
        req["network_mode"] = o["network"]
    if o.get("read_only"):
        req["read_only"] = True
    mounts = _volume_mounts(o.get("volume") or [], o.get("tmpfs") or [], o.get("mount") or [])
    if mounts:
        req["mounts"] = mounts
    if o.get("init"):
        req["init"] = True
    if o.get("restart") and o["restart"] != "no":
        req["restart_policy"] = _restart_policy(o["restart"])
    resources: dict[str, Any] = {}
    if o.get("memory"):
        resources["memory"] = _parse_bytes(o["memory"], "memory")
    if o.get("memory_swap"):
        resources["memory_swap"] = _parse_bytes(o["memory_swap"], "memory-swap")
    if o.get("cpus"):
        resources["nano_cpus"] = int(o["cpus"] * 1e9)
    if o.get("cpu_shares"):
        resources["cpu_shares"] = o["cpu_shares"]
    if o.get("pids_limit") is not None:
        resources["pids_limit"] = o["pids_limit"]
    if resources:
        req["resources"] = resources
    for key in ("cap_add", "cap_drop", "security_opt", "group_add"):
        if o.get(key):
            req[key] = list(o[key])
    if o.get("privileged"):
        req["privileged"] = True
    if o.get("stop_signal"):
        req["stop_signal"] = o["stop_signal"]
    if o.get("stop_timeout") is not None:
        req["stop_timeout"] = o["stop_timeout"]
    if o.get("log_opt"):
        req["log_opts"] = _labels(o["log_opt"])
    if o.get("runtime"):
        req["runtime"] = o["runtime"]
    return req


def _pull(ref: str) -> None:
    c = client("image", timeout_s=None)
    try:
        for frame in c.stream("image.pull", {"ref": ref}):
            status = frame.get("status", "")
            if status == "done":
                break
            if not frame.get("id") and frame.get("message"):
                sys.stderr.write(frame["message"] + "\n")
            elif frame.get("id") and status in ("Pull complete", "Already exists"):
                sys.stderr.write(f"{frame['id']}: {status}\n")
        sys.stderr.flush()
    finally:
        c.close()


def _create(req: dict[str, Any]) -> dict[str, Any]:
    ex = client("execution", timeout_s=300)
    try:
        try:
            return ex.call("execution.create", req)  # type: ignore[no-any-return]
        except errors.NotFound as exc:
            if (exc.details or {}).get("kind") != "image":
                raise
        image = req["image"]
        shown = image if (":" in image.rsplit("/", 1)[-1] or "@" in image) else f"{image}:latest"
        sys.stderr.write(f"Unable to find image '{shown}' locally\n")
        sys.stderr.flush()
        _pull(image)
        return ex.call("execution.create", req)  # type: ignore[no-any-return]
    finally:
        ex.close()


# -- run ----------------------------------------------------------------------------------------------------


class _SignalProxy:
    """Forwards SIGINT/SIGTERM/SIGHUP/... to the container while ``run`` is attached (``--sig-proxy``)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self, container_id: str) -> None:
        self.container_id = container_id
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_SignalProxy":
        for sig in self.SIGNALS:
            self._old[sig] = signal.signal(sig, self._forward)
        return self

    def _forward(self, signum: int, _frame: Any) -> None:
        c = client("execution", timeout_s=5)
        try:
            c.call("execution.kill", {"id": self.container_id, "signal": str(signum)})
        except errors.DockyardError:
            pass
        finally:
            c.close()

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class _RawTerminal:
    """Puts the local terminal in raw mode while a TTY container is attached."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stdin.isatty()
        self._saved: Any = None

    def __enter__(self) -> "_RawTerminal":
        if self.enabled:
            import termios
            import tty

            self._saved = termios.tcgetattr(sys.stdin.fileno())
            tty.setraw(sys.stdin.fileno())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            import termios

            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, self._saved)


def _pump(call: Any, stdin: bool) -> dict[str, Any]:
    """Copy the attach stream to stdout/stderr (and stdin to it) until the output ends.

    Returns the last control frame seen (``{"exit_code": n}`` of an exec, ``{"detached": true}``).
    """
    stdin_fd = sys.stdin.fileno() if stdin else -1
    last: dict[str, Any] = {}
    while True:
        more, body = call.next_frame(timeout_ms=0)
        if not more:
            return last
        if body is not None:
            if "d" in body:
                output.raw(body["d"], body.get("s", 1))
            else:
                last = body
                if body.get("detached"):
                    return last
            continue
        watch = [call.client.fileno()] + ([stdin_fd] if stdin_fd >= 0 else [])
        readable, _, _ = select.select(watch, [], [], 1.0)
        if stdin_fd >= 0 and stdin_fd in readable:
            try:
                data = os.read(stdin_fd, 65536)
            except OSError:
                data = b""
            if data:
                call.send(data)
            else:
                call.send_eof()
                stdin_fd = -1


class _Resizer:
    """Sends the local terminal size on SIGWINCH (and once at the start) to a TTY container or exec."""

    def __init__(self, enabled: bool, method: str, body: dict[str, Any]) -> None:
        self.enabled = enabled and sys.stdout.isatty()
        self.method = method
        self.body = body
        self._old: Any = None

    def _send(self, *_args: Any) -> None:
        size = _console_size()
        if not size:
            return
        c = client("execution", timeout_s=5)
        try:
            c.call(self.method, {**self.body, "height": size[0], "width": size[1]})
        except errors.DockyardError:
            pass
        finally:
            c.close()

    def __enter__(self) -> "_Resizer":
        if self.enabled:
            self._old = signal.signal(signal.SIGWINCH, self._send)
            self._send()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            signal.signal(signal.SIGWINCH, self._old)


def _start_error(exc: errors.DockyardError) -> int:
    status = (exc.details or {}).get("exit_status")
    if isinstance(status, int) and status in (126, 127):
        return status
    return EXIT_ENGINE


def _run_attached(container_id: str, *, stdin: bool, tty: bool, auto_remove: bool) -> int:
    waiter = client("execution", timeout_s=None)
    attacher = client("execution", timeout_s=None)
    ex = client("execution", timeout_s=60)
    try:
        wait_call = waiter.start(
            "execution.wait", {"id": container_id, "condition": "removed" if auto_remove else "next-exit"}
        )
        att = attacher.start("execution.attach", {"id": container_id, "stdin": stdin, "stdout": True, "stderr": True})
        att.next_frame()  # {"attached": true}: nothing written from now on is missed
        try:
            ex.call("execution.start", {"id": container_id})
        except errors.DockyardError as exc:
            att.cancel()
            sys.stderr.write(f"error: {output.error_text(exc)}\n")
            if auto_remove:
                with contextlib.suppress(errors.DockyardError):
                    wait_call.result()
            return _start_error(exc)
        with (
            _SignalProxy(container_id),
            _RawTerminal(tty and stdin),
            _Resizer(tty, "execution.resize", {"id": container_id}),
        ):
            last = _pump(att, stdin)
        if last.get("detached"):
            return 0
        result = wait_call.result()
        return int(result.get("exit_code", 0))
    finally:
        waiter.close()
        attacher.close()
        ex.close()


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
    try:
        req = _create_request(image, cmd, **opts)
        created = _create(req)
    except errors.DockyardError as exc:
        output.fail(exc, EXIT_ENGINE)
    cid = created["id"]
    if detach:
        ex = client("execution", timeout_s=60)
        try:
            ex.call("execution.start", {"id": cid})
        except errors.DockyardError as exc:
            output.fail(exc, _start_error(exc))
        finally:
            ex.close()
        output.line(cid)
        return
    try:
        code = _run_attached(cid, stdin=interactive, tty=tty, auto_remove=rm)
    except errors.DockyardError as exc:
        output.fail(exc, EXIT_ENGINE)
    raise typer.Exit(code)


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
        created = _create(_create_request(image, cmd, **opts))
    except errors.DockyardError as exc:
        output.fail(exc, EXIT_ENGINE)
    output.line(created["id"])


# -- lifecycle verbs ----------------------------------------------------------------------------------------------


_NOOP_NOTES = {"already_running": "container {} is already running", "already_stopped": "container {} is not running"}


def _each(ids: list[str], method: str, body: dict[str, Any], *, timeout_s: float | None = 60) -> None:
    """Call ``method`` for every container; print each name/id on success, errors as they come.

    A start of a running container or a stop of a stopped one succeeds (Docker's 304) with a note.
    """
    ex = client("execution", timeout_s=timeout_s)
    failed = False
    try:
        for ref in ids:
            try:
                reply = ex.call(method, {"id": ref, **body}) or {}
                for key, note in _NOOP_NOTES.items():
                    if reply.get(key):
                        output.warn(note.format(ref) + " (nothing to do)")
                output.line(ref)
            except errors.DockyardError as exc:
                failed = True
                sys.stderr.write(f"error: {output.error_text(exc)}\n")
    finally:
        ex.close()
    if failed:
        raise typer.Exit(1)


def start(
    containers: Annotated[list[str], typer.Argument(help="containers (id, prefix or name)")],
    attach: Annotated[bool, typer.Option("-a", "--attach", help="attach output and exit with its code")] = False,
    interactive: Interactive = False,
) -> None:
    """Start one or more stopped containers."""
    if attach:
        if len(containers) != 1:
            output.fail("you cannot start and attach multiple containers at once")
        ex = client("execution", timeout_s=30)
        try:
            info = ex.call("execution.inspect", {"id": containers[0]})
            code = _run_attached(
                info["id"],
                stdin=interactive,
                tty=bool(info["config"].get("tty")),
                auto_remove=bool(info["config"].get("auto_remove")),
            )
        except errors.DockyardError as exc:
            output.fail(exc)
        finally:
            ex.close()
        raise typer.Exit(code)
    _each(containers, "execution.start", {})


def stop(
    containers: Annotated[list[str], typer.Argument(help="containers")],
    time_s: Annotated[int | None, typer.Option("-t", "--time", "--timeout", help="seconds before SIGKILL")] = None,
    sig: Annotated[str | None, typer.Option("-s", "--signal", help="signal to send first")] = None,
) -> None:
    """Stop running containers (stop signal, then SIGKILL after the timeout)."""
    body: dict[str, Any] = {}
    if time_s is not None:
        body["timeout_s"] = time_s
    if sig:
        body["signal"] = sig
    _each(containers, "execution.stop", body, timeout_s=None)


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
    """Block until the containers stop; print each exit code."""
    ex = client("execution", timeout_s=None)
    try:
        for ref in containers:
            reply = ex.call("execution.wait", {"id": ref, "condition": "not-running"})
            output.line(str(reply["exit_code"]))
    except errors.DockyardError as exc:
        output.fail(exc)
    finally:
        ex.close()


# -- observation -----------------------------------------------------------------------------------------------------


def _ago(when: Any) -> str:
    if not when:
        return ""
    if isinstance(when, str):
        when = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
    secs = max(0, int((dt.datetime.now(dt.UTC) - when).total_seconds()))
    if secs < 1:
        return "Less than a second"
    if secs < 60:
        return f"{secs} second{'s' if secs != 1 else ''}"
    mins = secs // 60
    if mins < 60:
        return "About a minute" if mins == 1 else f"{mins} minutes"
    hours = mins // 60
    if hours < 48:
        return "About an hour" if hours == 1 else f"{hours} hours"
    days = hours // 24
    return f"{days} days"


def status_text(c: dict[str, Any]) -> str:
    """Docker's STATUS column: ``Up 3 seconds``, ``Exited (0) 2 seconds ago``, ``Created``."""
    st = c["state"]
    if st["status"] in ("running", "paused"):
        text = f"Up {_ago(st.get('started_at'))}"
        return text + " (Paused)" if st["status"] == "paused" else text
    if st["status"] == "restarting":
        return f"Restarting ({st['exit_code']}) {_ago(st.get('finished_at'))} ago"
    if st["status"] == "exited":
        return f"Exited ({st['exit_code']}) {_ago(st.get('finished_at'))} ago"
    if st["status"] == "removing":
        return "Removal In Progress"
    if st["status"] == "dead":
        return "Dead"
    return "Created"


def _command(c: dict[str, Any]) -> str:
    text = " ".join([c.get("path", ""), *c.get("args", [])]).strip()
    return f'"{text[:20]}…"' if len(text) > 20 else f'"{text}"'


def ps(
    all_: Annotated[bool, typer.Option("-a", "--all", help="show all containers (default: running)")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="only ids")] = False,
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="full ids and commands")] = False,
    filter_: Annotated[
        list[str], typer.Option("-f", "--filter", help="key=value: id, name, label, status, ancestor, exited")
    ] = [],  # noqa: B006
    last: Annotated[int | None, typer.Option("-n", "--last", help="show the n last created containers")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="'json' for one JSON object per line")] = None,
) -> None:
    """List containers."""
    filters: dict[str, list[str]] = {}
    for f in filter_:
        k, sep, v = f.partition("=")
        if not sep:
            output.fail(f"bad filter {f!r}: expected key=value")
        filters.setdefault(k, []).append(v)
    ex = client("execution", timeout_s=30)
    try:
        body: dict[str, Any] = {"all": all_ or last is not None, "filters": filters}
        if last is not None:
            body["limit"] = last
        reply = ex.call("execution.list", body)
    except errors.DockyardError as exc:
        output.fail(exc)
    finally:
        ex.close()
    containers = reply["containers"]
    if quiet:
        for c in containers:
            output.line(c["id"] if no_trunc else c["id"][:12])
        return
    if fmt == "json":
        for c in containers:
            output.line(json.dumps(c, default=str))
        return
    rows = []
    for c in containers:
        rows.append(
            [
                c["id"] if no_trunc else c["id"][:12],
                c["image"],
                _command(c) if not no_trunc else '"' + " ".join([c.get("path", ""), *c.get("args", [])]) + '"',
                f"{_ago(c['created_at'])} ago",
                status_text(c),
                c["name"],
            ]
        )
    output.table(["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"], rows)


def _parse_since(value: str | None) -> str | None:
    if not value:
        return None
    v = value.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if v[-1] in units and v[:-1].replace(".", "", 1).isdigit():
        when = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=float(v[:-1]) * units[v[-1]])
        return when.isoformat()
    if v.replace(".", "", 1).isdigit():
        return dt.datetime.fromtimestamp(float(v), dt.UTC).isoformat()
    return v


def logs(
    container: Annotated[str, typer.Argument(help="container")],
    follow: Annotated[bool, typer.Option("-f", "--follow", help="keep streaming new output")] = False,
    tail: Annotated[str, typer.Option("-n", "--tail", help="number of lines from the end, or 'all'")] = "all",
    since: Annotated[str | None, typer.Option("--since", help="RFC 3339 time, unix time or relative (10m)")] = None,
    until: Annotated[str | None, typer.Option("--until", help="RFC 3339 time, unix time or relative")] = None,
    timestamps: Annotated[bool, typer.Option("-t", "--timestamps", help="prefix each line with its time")] = False,
) -> None:
    """Print a container's output (stdout and stderr, as written)."""
    body: dict[str, Any] = {"id": container, "follow": follow, "timestamps": timestamps}
    if tail != "all":
        if not tail.lstrip("-").isdigit():
            output.fail(f"invalid tail {tail!r}")
        body["tail"] = int(tail)
    if since:
        body["since"] = _parse_since(since)
    if until:
        body["until"] = _parse_since(until)
    ex = client("execution", timeout_s=None)
    try:
        for frame in ex.stream("execution.logs", body):
            data = frame["d"]
            if timestamps:
                data = frame.get("t", "").encode() + b" " + data
            output.raw(data, frame.get("s", 1))
    except errors.DockyardError as exc:
        output.fail(exc)
    finally:
        ex.close()


def inspect(
    containers: Annotated[list[str], typer.Argument(help="containers")],
) -> None:
    """Show containers' configuration and state as JSON."""
    ex = client("execution", timeout_s=30)
    out = []
    try:
        for ref in containers:
            out.append(docker_inspect(ex.call("execution.inspect", {"id": ref})))
    except errors.DockyardError as exc:
        output.fail(exc)
    finally:
        ex.close()
    output.as_json(out)


def attach(
    container: Annotated[str, typer.Argument(help="container")],
    no_stdin: Annotated[bool, typer.Option("--no-stdin", help="do not attach stdin")] = False,
) -> None:
    """Attach to a running container's output (and stdin); exit with its exit code."""
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
        att = attacher.start("execution.attach", {"id": info["id"], "stdin": stdin})
        att.next_frame()
        tty = bool(info["config"].get("tty"))
        with (
            _SignalProxy(info["id"]),
            _RawTerminal(tty and stdin),
            _Resizer(tty, "execution.resize", {"id": info["id"]}),
        ):
            last = _pump(att, stdin)
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
    body: dict[str, Any] = {"id": container, "cmd": list(cmd), "tty": tty, "stdin": interactive}
    envs = _env_list(env, [])
    if envs:
        body["env"] = envs
    if user:
        body["user"] = user
    if workdir:
        body["working_dir"] = workdir
    if privileged:
        body["privileged"] = True
    if detach_keys:
        body["detach_keys"] = detach_keys
    if tty:
        size = _console_size()
        if size:
            body["console_size"] = size
    ex = client("execution", timeout_s=60)
    try:
        exec_id = ex.call("execution.exec_create", body)["id"]
    except errors.DockyardError as exc:
        ex.close()
        output.fail(exc, EXIT_ENGINE if not isinstance(exc, errors.Conflict) else 1)
    stream = client("execution", timeout_s=None)
    try:
        call = stream.start("execution.exec_start", {"exec_id": exec_id, "detach": detach, "stdin": interactive})
        try:
            call.next_frame()  # {"attached": ...}
        except errors.DockyardError as exc:
            sys.stderr.write(f"error: {output.error_text(exc)}\n")
            raise typer.Exit(_start_error(exc)) from None
        if detach:
            for _ in call:
                pass
            return
        with _RawTerminal(tty and interactive), _Resizer(tty, "execution.exec_resize", {"exec_id": exec_id}):
            last = _pump(call, interactive)
        if last.get("detached"):
            return
        code = last.get("exit_code")
        if code is None:
            code = ex.call("execution.exec_inspect", {"exec_id": exec_id}).get("exit_code") or 0
    except errors.DockyardError as exc:
        output.fail(exc, EXIT_ENGINE)
    finally:
        ex.close()
        stream.close()
    raise typer.Exit(int(code))


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
        resources["memory"] = _parse_bytes(memory, "memory")
    if memory_swap:
        resources["memory_swap"] = _parse_bytes(memory_swap, "memory-swap")
    if cpus is not None:
        resources["nano_cpus"] = int(cpus * 1e9)
    if cpu_shares is not None:
        resources["cpu_shares"] = cpu_shares
    if pids_limit is not None:
        resources["pids_limit"] = pids_limit
    body: dict[str, Any] = {"resources": resources}
    if restart:
        body["restart_policy"] = _restart_policy(restart)
    _each(containers, "execution.update", body)


# -- docker-style inspect --------------------------------------------------------------------------------------------


def docker_inspect(c: dict[str, Any]) -> dict[str, Any]:
    """A container in the shape ``docker inspect`` prints (ContainerJSON)."""
    cfg = c.get("config") or {}
    st = c["state"]
    res = cfg.get("resources") or {}
    policy = cfg.get("restart_policy") or {"name": "no", "maximum_retry_count": 0}
    return {
        "Id": c["id"],
        "Created": c["created_at"],
        "Path": c.get("path", ""),
        "Args": c.get("args", []),
        "State": {
            "Status": st["status"],
            "Running": st["running"],
            "Paused": st["paused"],
            "Restarting": st["restarting"],
            "OOMKilled": st["oom_killed"],
            "Dead": st["dead"],
            "Pid": st["pid"],
            "ExitCode": st["exit_code"],
            "Error": st["error"],
            "StartedAt": st.get("started_at") or "0001-01-01T00:00:00Z",
            "FinishedAt": st.get("finished_at") or "0001-01-01T00:00:00Z",
        },
        "Image": c.get("image_id", ""),
        "Name": "/" + c["name"],
        "RestartCount": c.get("restart_count", 0),
        "Driver": "overlay2",
        "Platform": "linux",
        "LogPath": c.get("log_path", ""),
        "ExecIDs": c.get("exec_ids") or None,
        "HostConfig": {
            "AutoRemove": bool(cfg.get("auto_remove")),
            "NetworkMode": cfg.get("network_mode") or "none",
            "RestartPolicy": {
                "Name": policy.get("name", "no"),
                "MaximumRetryCount": policy.get("maximum_retry_count", 0),
            },
            "ReadonlyRootfs": bool(cfg.get("read_only")),
            "Privileged": bool(cfg.get("privileged")),
            "CapAdd": cfg.get("cap_add") or None,
            "CapDrop": cfg.get("cap_drop") or None,
            "SecurityOpt": cfg.get("security_opt") or None,
            "Init": bool(cfg.get("init")),
            "Memory": res.get("memory") or 0,
            "MemorySwap": res.get("memory_swap") or 0,
            "NanoCpus": res.get("nano_cpus") or 0,
            "CpuShares": res.get("cpu_shares") or 0,
            "PidsLimit": res.get("pids_limit"),
            "LogConfig": {"Type": "json-file", "Config": cfg.get("log_opts") or {}},
            "Runtime": c.get("runtime", "runc"),
        },
        "Mounts": [
            {
                "Type": m["type"],
                "Name": m.get("name") or None,
                "Source": m["source"],
                "Destination": m["destination"],
                "RW": m["rw"],
            }
            for m in c.get("mounts") or []
        ],
        "Config": {
            "Hostname": c.get("hostname", ""),
            "User": cfg.get("user", ""),
            "Tty": bool(cfg.get("tty")),
            "OpenStdin": bool(cfg.get("open_stdin")),
            "StdinOnce": bool(cfg.get("stdin_once")),
            "Env": cfg.get("env") or [],
            "Cmd": cfg.get("cmd"),
            "Entrypoint": cfg.get("entrypoint"),
            "Image": c.get("image", ""),
            "WorkingDir": cfg.get("working_dir", ""),
            "Labels": c.get("labels") or {},
            "StopSignal": c.get("stop_signal", "SIGTERM"),
            "StopTimeout": cfg.get("stop_timeout"),
        },
    }


# -- volumes ---------------------------------------------------------------------------------------------------


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


def volume_prune() -> None:
    """Remove every volume no container uses."""
    ex = client("execution", timeout_s=120)
    try:
        for name in ex.call("execution.volume_prune", {})["removed"]:
            output.line(name)
    except errors.DockyardError as exc:
        output.fail(exc)
    finally:
        ex.close()


# -- wiring ------------------------------------------------------------------------------------------------------------

_RUN_SETTINGS = {"allow_interspersed_args": False}


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

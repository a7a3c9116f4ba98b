"""What the container commands do, free of typer so the CLI's hot path can use it.

``cli.containers`` (the typer commands) and ``cli.hot`` (the hand-written parser of
the hot verbs: ``run``, ``exec``, ``ps``, ``rm``, ``stop``, ``start``) both end here,
so both paths build the same requests and behave the same. Importing this module
costs no typer, pydantic or pyzmq: on ``ipc://`` endpoints the client speaks ZMTP
itself (``common.rpc.zmtp``).

``run`` follows ``docker run`` (docker-api.md section 4) in one ``execution.run``
call: create (pulling the image first if it is missing), attach, start, stream the
output byte for byte, and end with the exit status (after the removal with
``--rm``). Exit codes: the container's; 125 when the engine failed; 126/127 when the
command could not be run. Signals the CLI receives are forwarded to the container.
A restart of the execution service while the output streams (``run``, ``start -a``) is
ridden through: the output resumes from the container's log, exactly once
(``cli.resume``).
"""

from __future__ import annotations

import _signal  # the C module: ``signal`` would import enum and build its enums (a few ms)
import posix
import select
import sys
import time

from cli import output
from cli.connect import client
from common import errors, posixos, trace

TYPE_CHECKING = False  # typing costs the CLI's hot path an import; type checkers read this as typing's
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

EXIT_ENGINE = output.EXIT_ENGINE_ERROR

# -- request building ---------------------------------------------------------------------------


_BYTE_FLAGS = {"memory": "-m, --memory", "memory-swap": "--memory-swap"}


def parse_bytes(value: str | None, what: str) -> int | None:
    """A size flag (``--memory``, ``--memory-swap``) in bytes, as docker's ``units.RAMInBytes``.

    ``32m``, ``1.5g``, ``512k``, ``1024`` (bytes), with an optional ``b``/``ib`` suffix;
    ``-1`` (unlimited) only for ``memory-swap``. Anything else ends the command (exit 125)
    with docker's ``invalid argument "-5" for "-m, --memory" flag: invalid size: '-5'``.
    """
    if value is None or value == "":
        return None
    v = value.strip().lower()
    if v == "-1" and what == "memory-swap":
        return -1
    units = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}
    num = v.removesuffix("b").removesuffix("i") if len(v) > 1 else v
    mult = units.get(num[-1:], 0) if num[-1:].isalpha() else 1
    digits = (num[:-1] if num[-1:].isalpha() else num).strip()
    if mult and digits and digits.replace(".", "", 1).isdigit():
        return int(float(digits) * mult)
    flag = _BYTE_FLAGS.get(what, f"--{what}")
    output.fail(f'invalid argument "{value}" for "{flag}" flag: invalid size: \'{value}\'', EXIT_ENGINE)


def checked_resources(resources: dict[str, Any], *, update: bool = False) -> dict[str, Any]:
    """``resources`` after dockerd's checks (``common.resources.validate``); a refused value
    ends the command with dockerd's message (exit 125)."""
    from common import resources as limits

    try:
        limits.validate(resources, update=update)
    except limits.ResourceError as exc:
        output.fail(str(exc), EXIT_ENGINE)
    return resources


def nano_cpus(cpus: float) -> int:
    """``--cpus`` in nano-CPUs; a value finer than 1e-9 ends the command as docker's flag parser."""
    from common import resources as limits

    try:
        return limits.nano_cpus(cpus)
    except limits.ResourceError as exc:
        output.fail(f'invalid argument "{cpus:g}" for "--cpus" flag: {exc}', EXIT_ENGINE)


_ENV_FILE_SPACES = " \t"


def parse_env_file(text: str, path: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """The ``KEY=VALUE`` entries of an env file, by docker/cli's rules (``opts/envfile.go``).

    One variable a line; a UTF-8 BOM, leading whitespace, empty lines and lines starting
    with ``#`` are skipped; ``NAME=VALUE`` keeps the value exactly (no trimming, no quote
    removal); ``NAME`` alone takes the value from ``environ`` (the CLI's environment) and
    is dropped when unset there. A name containing a space or tab (``Y = 2``) or an empty
    name (``=x``) ends the command: ``poorly formatted environment ...`` naming the file
    and the line (exit 125, as a bad flag).
    """
    env = posixos.environ() if environ is None else environ
    out = []
    for number, raw in enumerate(text.removeprefix("\ufeff").splitlines(), 1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name = name.lstrip(_ENV_FILE_SPACES)
        problem = ""
        if any(c in name for c in _ENV_FILE_SPACES):
            problem = f"variable '{name}' contains whitespaces"
        elif not name:
            problem = f"no variable name on line '{line}'"
        if problem:
            output.fail(f"poorly formatted environment in env file '{path}' line {number}: {problem}", EXIT_ENGINE)
        if sep:
            out.append(f"{name}={value}")
        elif name in env:
            out.append(f"{name}={env[name]}")
    return out


def env_list(env: list[str], env_file: list[str]) -> list[str]:
    """The container's environment: the env files in order (``parse_env_file``), then ``-e`` values.

    ``-e NAME`` takes the value from the CLI's environment (dropped when unset there); an
    entry with an empty name (``-e =x``) ends the command, as in docker.
    """
    out = []
    if env_file:
        from cli import files

        for path in env_file:
            out += parse_env_file(files.read_text(path, "env file", EXIT_ENGINE), path)
    for entry in env:
        name, sep, _value = entry.partition("=")
        if not name:
            output.fail(f"invalid environment variable: {entry}", EXIT_ENGINE)
        if sep:
            out.append(entry)
        elif (value := posixos.environ().get(name)) is not None:  # docker run -e NAME: the client's value
            out.append(f"{name}={value}")
    return out


def labels(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values:
        k, _, val = v.partition("=")
        out[k] = val
    return out


def volume_mounts(volumes: list[str], tmpfs: list[str], mounts: list[str]) -> list[dict[str, Any]]:
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
            import os.path  # only a bind mount pays for importing os (common.posixos)

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
        if kind == "bind":  # unlike -v, --mount refuses a missing source (Docker's), unless asked to make it
            entry["create_source"] = fields.get("bind-create-mountpoint", "false") in ("true", "1")
        if kind == "tmpfs":
            opts = []
            if "tmpfs-size" in fields:
                opts.append(f"size={fields['tmpfs-size']}")
            if "tmpfs-mode" in fields:
                opts.append(f"mode={fields['tmpfs-mode']}")
            entry["options"] = opts
        out.append(entry)
    return out


def restart_policy(value: str) -> dict[str, Any]:
    name, _, count = value.partition(":")
    if name not in ("no", "always", "on-failure", "unless-stopped"):
        output.fail(f"invalid restart policy {value!r}", EXIT_ENGINE)
    policy: dict[str, Any] = {"name": name}
    if count:
        if name != "on-failure" or not count.isdigit():
            output.fail(f"invalid restart policy {value!r}: only on-failure takes a retry count", EXIT_ENGINE)
        policy["maximum_retry_count"] = int(count)
    return policy


def console_size() -> list[int] | None:
    try:
        size = posix.get_terminal_size(sys.stdout.fileno())
        return [size.lines, size.columns]
    except OSError:
        return None


def create_request(image: str, cmd: list[str] | None, **o: Any) -> dict[str, Any]:
    req: dict[str, Any] = {"image": image}
    if cmd:
        req["cmd"] = list(cmd)
    if o.get("name"):
        req["name"] = o["name"]
    if o.get("entrypoint") is not None:
        req["entrypoint"] = [o["entrypoint"]] if o["entrypoint"] else []
    env = env_list(o.get("env") or [], o.get("env_file") or [])
    if env:
        req["env"] = env
    for key in ("workdir", "user", "hostname"):
        if o.get(key):
            req[{"workdir": "working_dir"}.get(key, key)] = o[key]
    if o.get("label"):
        req["labels"] = labels(o["label"])
    if o.get("rm"):
        req["auto_remove"] = True
    if o.get("tty"):
        req["tty"] = True
        size = console_size()
        if size:
            req["console_size"] = size
    if o.get("interactive"):
        req["open_stdin"] = True
        req["stdin_once"] = True
    network = o.get("network") or "none"
    if network == "bridge":
        from common import networks

        output.warn(networks.bridge_warning())
    if network not in ("none", "bridge", "default"):
        req["network_mode"] = network
    if o.get("read_only"):
        req["read_only"] = True
    mounts = volume_mounts(o.get("volume") or [], o.get("tmpfs") or [], o.get("mount") or [])
    if mounts:
        req["mounts"] = mounts
    if o.get("init"):
        req["init"] = True
    if o.get("restart") and o["restart"] != "no":
        req["restart_policy"] = restart_policy(o["restart"])
    resources: dict[str, Any] = {}
    if o.get("memory"):
        resources["memory"] = parse_bytes(o["memory"], "memory")
    if o.get("memory_swap"):
        resources["memory_swap"] = parse_bytes(o["memory_swap"], "memory-swap")
    if o.get("cpus"):
        resources["nano_cpus"] = nano_cpus(o["cpus"])
    if o.get("cpu_shares"):
        resources["cpu_shares"] = o["cpu_shares"]
    if o.get("pids_limit") is not None:
        resources["pids_limit"] = o["pids_limit"]
    if resources:
        req["resources"] = checked_resources(resources)
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
        req["log_opts"] = labels(o["log_opt"])
    if o.get("runtime"):
        req["runtime"] = o["runtime"]
    return req


# -- pulling ------------------------------------------------------------------------------------------------


def pull(ref: str) -> None:
    """Pull ``ref`` with one line per finished layer on stderr (what ``run`` shows)."""
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


def _missing_image(exc: errors.NotFound) -> bool:
    return (exc.details or {}).get("kind") == "image"


def _unable_to_find(image: str) -> None:
    shown = image if (":" in image.rsplit("/", 1)[-1] or "@" in image) else f"{image}:latest"
    sys.stderr.write(f"Unable to find image '{shown}' locally\n")
    sys.stderr.flush()


def create(req: dict[str, Any]) -> dict[str, Any]:
    """``execution.create``; pull the image first when the service says it is missing."""
    ex = client("execution", timeout_s=300)
    try:
        try:
            return ex.call("execution.create", req)  # type: ignore[no-any-return]
        except errors.NotFound as exc:
            if not _missing_image(exc):
                raise
        _unable_to_find(req["image"])
        pull(req["image"])
        return ex.call("execution.create", req)  # type: ignore[no-any-return]
    finally:
        ex.close()


# -- attached I/O -------------------------------------------------------------------------------------------


class SignalProxy:
    """Forwards SIGINT/SIGTERM/SIGHUP/... to the container while ``run`` is attached (``--sig-proxy``)."""

    SIGNALS = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT, _signal.SIGUSR1, _signal.SIGUSR2)

    def __init__(self, container_id: str) -> None:
        self.container_id = container_id
        self._old: dict[int, Any] = {}

    def __enter__(self) -> SignalProxy:
        for sig in self.SIGNALS:
            self._old[sig] = _signal.signal(sig, self._forward)
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
            _signal.signal(sig, old)


class RawTerminal:
    """Puts the local terminal in raw mode while a TTY container is attached."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stdin.isatty()
        self._saved: Any = None

    def __enter__(self) -> RawTerminal:
        if self.enabled:
            import termios
            import tty

            self._saved = termios.tcgetattr(sys.stdin.fileno())
            # TCSANOW, not setraw's default TCSAFLUSH: that discards what was typed (or piped
            # into the terminal) before the container was attached
            tty.setraw(sys.stdin.fileno(), termios.TCSANOW)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            import termios

            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, self._saved)


class Resizer:
    """Sends the local terminal size on SIGWINCH (and once at the start) to a TTY container or exec."""

    def __init__(self, enabled: bool, method: str, body: dict[str, Any]) -> None:
        self.enabled = enabled and sys.stdout.isatty()
        self.method = method
        self.body = body
        self._old: Any = None

    def _send(self, *_args: Any) -> None:
        size = console_size()
        if not size:
            return
        c = client("execution", timeout_s=5)
        try:
            c.call(self.method, {**self.body, "height": size[0], "width": size[1]})
        except errors.DockyardError:
            pass
        finally:
            c.close()

    def __enter__(self) -> Resizer:
        if self.enabled:
            self._old = _signal.signal(_signal.SIGWINCH, self._send)
            self._send()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            _signal.signal(_signal.SIGWINCH, self._old)


def pump(call: Any, stdin: bool, printed: dict[int, int] | None = None) -> dict[str, Any]:
    """Copy the stream's output to stdout/stderr (and stdin to it) until the output ends.

    Stdin is flow-controlled: it is read only while the call has send credit. When the
    output ends, unread stdin is left alone (the process no longer reads it). ``printed``
    (optional) counts the bytes written per stream (1, 2), for ``cli.resume``.

    Returns the last control frame seen (a frame without ``d``: ``{"exit_code": n}``
    at the end of a run or an exec, ``{"detached": true}`` after the detach keys).
    """
    stdin_fd = sys.stdin.fileno() if stdin else -1
    last: dict[str, Any] = {}
    first = True
    while True:
        more, body = call.next_frame(timeout_ms=0)
        if not more:
            return last
        if body is not None:
            if "d" in body:
                if first:
                    trace.mark("first output")
                    first = False
                stream = body.get("s", 1)
                output.raw(body["d"], stream)
                if printed is not None:
                    printed[stream] = printed.get(stream, 0) + len(body["d"])
            else:
                last = body
                if body.get("detached"):
                    return last
            continue
        # stdin is read only while the service takes more of it (send credit): a container that
        # reads slowly, or not at all, leaves the rest in the pipe and slows the producer down
        reading = stdin_fd >= 0 and call.can_send
        watch = [call.client.fileno()] + ([stdin_fd] if reading else [])
        readable, _, _ = select.select(watch, [], [], 1.0)
        if reading and stdin_fd in readable:
            try:
                data = posix.read(stdin_fd, 65536)
            except OSError:
                data = b""
            if data:
                call.send(data)
            else:
                call.send_eof()
                stdin_fd = -1


NOT_A_TTY = "the input device is not a TTY"


def check_tty(interactive: bool, tty: bool) -> None:
    """Refuse ``-it`` when stdin is not a terminal, as the docker CLI does (``In.CheckTty``).

    A container TTY fed from a pipe or a file would echo the input back and turn its
    newlines into CRLF, so ``echo hi | docker run -it busybox cat`` fails with ``the input
    device is not a TTY`` and exit 1 before anything is created. ``-t`` without ``-i``
    (stdin not attached) and ``-d`` are allowed. Raises SystemExit(1) after the message.
    """
    if tty and interactive and not posix.isatty(sys.stdin.fileno()):
        output.fail(NOT_A_TTY, 1)


def start_error(exc: errors.DockyardError) -> int:
    """Exit code of ``run`` when the process could not be started: 126/127 as Docker, else 125."""
    status = (exc.details or {}).get("exit_status")
    if isinstance(status, int) and status in (126, 127):
        return status
    return EXIT_ENGINE


# -- run, start ---------------------------------------------------------------------------------------------


def run(image: str, cmd: list[str] | None, *, detach: bool = False, **opts: Any) -> int:
    """``docker run``: one ``execution.run`` call; returns the exit code (see module docstring).

    ``opts`` are the option values of the ``run`` command (``name``, ``rm``, ``env`` ...),
    by their typer parameter names.
    """
    if not detach:
        check_tty(bool(opts.get("interactive")), bool(opts.get("tty")))
    req = create_request(image, cmd, **opts)
    stdin = bool(opts.get("interactive"))
    body = {**req, "detach": detach, "stdin": stdin}
    ex = client("execution", timeout_s=None)
    try:
        trace.mark("run call")
        try:
            call = ex.start("execution.run", body)
            try:
                _more, created = call.next_frame()
            except errors.NotFound as exc:
                if not _missing_image(exc):
                    raise
                _unable_to_find(image)
                pull(image)
                call = ex.start("execution.run", body)
                _more, created = call.next_frame()
        except errors.DockyardError as exc:
            output.fail(exc, EXIT_ENGINE)
        cid = str(created["id"])
        try:
            if detach:
                output.line(cid)  # as the docker CLI prints it: once created, whatever the start does
                call.result()
                return 0
            tty = bool(opts.get("tty"))
            printed: dict[int, int] = {}
            with SignalProxy(cid), RawTerminal(tty and stdin), Resizer(tty, "execution.resize", {"id": cid}):
                try:
                    last = pump(call, stdin, printed)
                except errors.Unavailable as exc:
                    from cli import resume

                    if not resume.lost_contact(call, exc):
                        raise
                    from common.resume import run_hold

                    opts_rm = bool(opts.get("rm"))
                    hold = run_hold(call.request_id) if opts_rm else ""
                    return resume.follow(
                        cid, printed, exc, auto_remove=opts_rm, stdin=stdin, start_if_created=True, hold=hold
                    )
        except errors.DockyardError as exc:
            sys.stderr.write(f"error: {output.error_text(exc)}\n")
            sys.stderr.flush()
            return start_error(exc)
        trace.mark("run done")
        if last.get("detached"):
            return 0
        return int(last.get("exit_code", 0))
    finally:
        ex.close()


def start_attached(container: str, *, interactive: bool) -> int:
    """``docker start -a``: attach, start, stream the output; return the exit code.

    A start that fails (the command does not exist, cannot be executed ...) prints the
    error and exits 1, as the docker CLI does for ``docker start -a`` (it returns the error
    of ContainerStart; only ``run`` maps it to 126/127); the container's recorded exit
    status is still Docker's 126/127.
    """
    ex = client("execution", timeout_s=30)
    waiter = client("execution", timeout_s=None)
    attacher = client("execution", timeout_s=None)
    try:
        info = ex.call("execution.inspect", {"id": container})
        container_id = info["id"]
        stdin = interactive
        auto_remove = bool(info["config"].get("auto_remove"))
        wait_call = waiter.start(
            "execution.wait", {"id": container_id, "condition": "removed" if auto_remove else "next-exit"}
        )
        att = attacher.start("execution.attach", {"id": container_id, "stdin": stdin, "stdout": True, "stderr": True})
        att.next_frame()  # {"attached": true}: nothing written from now on is missed
        since_ns = time.time_ns()  # this start's output is what the log holds from here on
        try:
            ex.call("execution.start", {"id": container_id})
        except errors.DockyardError as exc:
            att.cancel()
            sys.stderr.write(f"error: {output.error_text(exc)}\n")
            if auto_remove:
                try:
                    wait_call.result()
                except errors.DockyardError:
                    pass
            return 1
        tty = bool(info["config"].get("tty"))
        with (
            SignalProxy(container_id),
            RawTerminal(tty and stdin),
            Resizer(tty, "execution.resize", {"id": container_id}),
        ):
            printed: dict[int, int] = {}
            try:
                last = pump(att, stdin, printed)
            except errors.Unavailable as exc:
                from cli import resume

                if not resume.lost_contact(att, exc):
                    raise
                since = resume.rfc3339(since_ns, 6)
                return resume.follow(container_id, printed, exc, since=since, auto_remove=auto_remove, stdin=stdin)
        if last.get("detached"):
            return 0
        result = wait_call.result()
        return int(result.get("exit_code", 0))
    except errors.DockyardError as exc:
        output.fail(exc)
    finally:
        waiter.close()
        attacher.close()
        ex.close()


# -- exec ---------------------------------------------------------------------------------------------------


def exec_(
    container: str,
    cmd: list[str],
    *,
    detach: bool = False,
    interactive: bool = False,
    tty: bool = False,
    env: list[str] | None = None,
    user: str | None = None,
    workdir: str | None = None,
    privileged: bool = False,
    detach_keys: str = "",
) -> int:
    """``docker exec`` in one ``execution.exec`` call; returns the exit code.

    Exit codes: the command's; 1 when the container does not exist or does not run, or with
    ``-it`` when stdin is not a terminal (``check_tty``, after a missing container, as the
    docker CLI checks); 126/127 when the command could not be started (an unknown ``-u`` user
    too: the exec is created and its start fails, as in dockerd), 1 for that with ``-d``
    (``docker exec -d`` prints the daemon's error); 125 when the engine failed.
    """
    if not detach and tty and interactive and not posix.isatty(sys.stdin.fileno()):
        ex = client("execution", timeout_s=30)
        try:
            ex.call("execution.inspect", {"id": container})  # a missing container is the error to show
        except errors.DockyardError as exc:
            output.fail(exc, 1 if isinstance(exc, errors.NotFound) else EXIT_ENGINE)
        finally:
            ex.close()
        check_tty(interactive, tty)
    body: dict[str, Any] = {"id": container, "cmd": list(cmd), "tty": tty, "stdin": interactive, "detach": detach}
    envs = env_list(env or [], [])
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
        size = console_size()
        if size:
            body["console_size"] = size
    ex = client("execution", timeout_s=None)
    try:
        call = ex.start("execution.exec", body)
        try:
            _more, created = call.next_frame()
        except errors.DockyardError as exc:
            output.fail(exc, 1 if isinstance(exc, (errors.Conflict, errors.NotFound)) else EXIT_ENGINE)
        exec_id = str(created["id"])
        try:
            call.next_frame()  # started ({"attached": ..., "pid"})
        except errors.DockyardError as exc:
            sys.stderr.write(f"error: {output.error_text(exc)}\n")
            return 1 if detach else start_error(exc)  # docker exec -d: the daemon's error, exit 1
        if detach:
            call.result()
            return 0
        with RawTerminal(tty and interactive), Resizer(tty, "execution.exec_resize", {"exec_id": exec_id}):
            last = pump(call, interactive)
        if last.get("detached"):
            return 0
        code = last.get("exit_code")
        if code is None:
            code = ex.call("execution.exec_inspect", {"exec_id": exec_id}, timeout_s=30).get("exit_code") or 0
        return int(code)
    except errors.DockyardError as exc:
        output.fail(exc, EXIT_ENGINE)
    finally:
        ex.close()


# -- lifecycle verbs ----------------------------------------------------------------------------------------


_NOOP_NOTES = {"already_running": "container {} is already running", "already_stopped": "container {} is not running"}


def each(ids: list[str], method: str, body: dict[str, Any], *, timeout_s: float | None = 60) -> int:
    """Call ``method`` for every container; print each name/id on success, errors as they come.

    A start of a running container or a stop of a stopped one succeeds (Docker's 304) with
    a note. Returns 0, or 1 if any call failed.
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
    return 1 if failed else 0


def stop_body(time_s: int | None, sig: str | None) -> dict[str, Any]:
    """The ``execution.stop`` body of ``stop -t T -s SIG``."""
    body: dict[str, Any] = {}
    if time_s is not None:
        body["timeout_s"] = time_s
    if sig:
        body["signal"] = sig
    return body


# -- ps -----------------------------------------------------------------------------------------------------


def _ago(when: Any) -> str:
    import datetime as dt

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
    *,
    all_: bool = False,
    quiet: bool = False,
    no_trunc: bool = False,
    filter_: list[str] | None = None,
    last: int | None = None,
    fmt: str | None = None,
    size: bool = False,
) -> int:
    """``docker ps``: list containers as a table, ids (``quiet``), or as ``fmt`` says: ``table``,
    ``json`` (one object per line), ``table TEMPLATE`` or a Go template (``cli.formatter``).

    ``size`` (``-s``, or a format that uses ``.Size``, as the docker CLI decides): each
    container's writable-layer bytes and those plus its image's (``container_sizes``)."""
    filters: dict[str, list[str]] = {}
    for f in filter_ or []:
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
    sizes: dict[str, tuple[int, int]] | None = None
    if not quiet and (size or (fmt is not None and ".Size" in fmt)):
        sizes = container_sizes(containers)
    if fmt and quiet and fmt != "table":  # the docker CLI: -q wins, with this warning
        output.raw(b"WARNING: Ignoring custom format, because both --format and --quiet are set.\n", 2)
    elif fmt and not quiet:
        return _ps_format(fmt, containers, no_trunc, sizes)
    if quiet:
        output.lines(c["id"] if no_trunc else c["id"][:12] for c in containers)
        return 0
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
                *([size_text(*sizes.get(c["id"], (0, 0)))] if sizes is not None else []),
            ]
        )
    headers = ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"]
    output.table(headers + (["SIZE"] if sizes is not None else []), rows)
    return 0


def container_sizes(containers: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """``{container id: (SizeRw, SizeRootFs)}`` as ``docker ps -s`` shows them: the bytes of the
    files each container's writable snapshot holds (``snapshot.usage``'s ``content_size``, moby's
    ``directory.Size``) and that plus its image's size (``image.list``). What cannot be measured
    (a service down, a snapshot gone) counts 0; the listing still prints."""
    if not containers:
        return {}
    image_sizes: dict[str, int] = {}
    images = client("image", timeout_s=30)
    try:
        image_sizes = {str(i["id"]): int(i.get("size") or 0) for i in images.call("image.list", {})["images"]}
    except errors.DockyardError:
        pass
    finally:
        images.close()
    out: dict[str, tuple[int, int]] = {}
    snaps = client("snapshot", timeout_s=60)
    try:
        for c in containers:
            rw = 0
            if c.get("snapshot_key"):
                try:
                    usage = snaps.call("snapshot.usage", {"key": c["snapshot_key"]})
                    content = usage.get("content_size")
                    rw = int(content if content is not None else usage.get("size") or 0)
                except errors.DockyardError:
                    pass
            out[c["id"]] = (rw, rw + image_sizes.get(str(c.get("image_id") or ""), 0))
    finally:
        snaps.close()
    return out


def size_text(rw: int, rootfs: int) -> str:
    """The docker CLI's SIZE: ``8.19kB (virtual 2.15MB)`` (3 significant digits, 1000-based)."""
    from cli.formatter import human_size

    text = human_size(rw)
    return f"{text} (virtual {human_size(rootfs)})" if rootfs > 0 else text


def _ps_format(
    fmt: str, containers: list[dict[str, Any]], no_trunc: bool, sizes: dict[str, tuple[int, int]] | None
) -> int:
    """``ps --format``: imports the template engine only here, off the hot path's common case."""
    import datetime as dt

    from cli import formatter

    now = dt.datetime.now(dt.UTC)
    rows = [
        formatter.container_context(
            c, now, trunc=not no_trunc, size=size_text(*sizes.get(c["id"], (0, 0))) if sizes is not None else "0B"
        )
        for c in containers
    ]
    try:
        text = formatter.render_list(
            formatter.list_format(fmt, formatter.CONTAINER_TABLE), rows, formatter.CONTAINER_HEADERS
        )
    except formatter.FormatError as exc:
        output.fail(str(exc))
    output.text(text)
    return 0

"""The CLI's hot path: a small hand-written parser for the verbs users run all day.

``dockyard run|create|exec|ps|rm|stop|start|kill ...`` are parsed here and handed to
``cli.runner`` without importing typer (~100 ms), pydantic or pyzmq. The parser
follows the rules of the typer/click parser the rest of the CLI uses, with the same
option names and defaults (``tests/unit/test_cli_hot.py`` checks both against each
other):

- long options ``--name value`` / ``--name=value``; short ones ``-e VALUE`` / ``-eVALUE``,
  grouped flags ``-dit`` (a value option inside a group takes the rest of the group);
- ``--`` ends the options; a lone ``-`` is an argument;
- ``run`` and ``create`` stop reading options at the first argument (the image), so
  ``run busybox ls -l`` passes ``-l`` to ``ls``; the other verbs take options anywhere;
- a repeated single-value option keeps its last value, a multiple one collects all.

Anything it does not handle exactly as typer would (``--help``, an unknown option, a
missing argument, a value that is not a number, ``dockyard container ...``) makes
``main`` return None, and the typer app parses the command line instead, so errors
and help read the same as everywhere else.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing costs the CLI's hot path an import; type checkers read this as typing's
if TYPE_CHECKING:
    from typing import Any

FLAG, VALUE, MULTI, INT, FLOAT = "flag", "value", "multi", "int", "float"

# option table of each hot verb: dest -> (kind, default, names); dests are the typer parameter names
_RUN: dict[str, tuple[str, Any, tuple[str, ...]]] = {
    "detach": (FLAG, False, ("-d", "--detach")),
    "name": (VALUE, None, ("--name",)),
    "rm": (FLAG, False, ("--rm",)),
    "env": (MULTI, [], ("-e", "--env")),
    "env_file": (MULTI, [], ("--env-file",)),
    "entrypoint": (VALUE, None, ("--entrypoint",)),
    "workdir": (VALUE, None, ("-w", "--workdir")),
    "user": (VALUE, None, ("-u", "--user")),
    "label": (MULTI, [], ("-l", "--label")),
    "hostname": (VALUE, None, ("-h", "--hostname")),
    "tty": (FLAG, False, ("-t", "--tty")),
    "interactive": (FLAG, False, ("-i", "--interactive")),
    "network": (VALUE, "none", ("--network", "--net")),
    "read_only": (FLAG, False, ("--read-only",)),
    "volume": (MULTI, [], ("-v", "--volume")),
    "tmpfs": (MULTI, [], ("--tmpfs",)),
    "mount": (MULTI, [], ("--mount",)),
    "init": (FLAG, False, ("--init",)),
    "restart": (VALUE, "no", ("--restart",)),
    "memory": (VALUE, None, ("-m", "--memory")),
    "memory_swap": (VALUE, None, ("--memory-swap",)),
    "cpus": (FLOAT, None, ("--cpus",)),
    "cpu_shares": (INT, None, ("-c", "--cpu-shares")),
    "pids_limit": (INT, None, ("--pids-limit",)),
    "cap_add": (MULTI, [], ("--cap-add",)),
    "cap_drop": (MULTI, [], ("--cap-drop",)),
    "privileged": (FLAG, False, ("--privileged",)),
    "security_opt": (MULTI, [], ("--security-opt",)),
    "stop_signal": (VALUE, None, ("--stop-signal",)),
    "stop_timeout": (INT, None, ("--stop-timeout",)),
    "log_opt": (MULTI, [], ("--log-opt",)),
    "runtime": (VALUE, None, ("--runtime",)),
    "group_add": (MULTI, [], ("--group-add",)),
}
_CREATE = {k: v for k, v in _RUN.items() if k != "detach"}

OPTIONS: dict[str, dict[str, tuple[str, Any, tuple[str, ...]]]] = {
    "run": _RUN,
    "create": _CREATE,
    "ps": {
        "all_": (FLAG, False, ("-a", "--all")),
        "quiet": (FLAG, False, ("-q", "--quiet")),
        "no_trunc": (FLAG, False, ("--no-trunc",)),
        "filter_": (MULTI, [], ("-f", "--filter")),
        "last": (INT, None, ("-n", "--last")),
        "fmt": (VALUE, None, ("--format",)),
        "size": (FLAG, False, ("-s", "--size")),
    },
    "rm": {
        "force": (FLAG, False, ("-f", "--force")),
        "volumes": (FLAG, False, ("-v", "--volumes")),
    },
    "stop": {
        "time_s": (INT, None, ("-t", "--time", "--timeout")),
        "sig": (VALUE, None, ("-s", "--signal")),
    },
    "start": {
        "attach": (FLAG, False, ("-a", "--attach")),
        "interactive": (FLAG, False, ("-i", "--interactive")),
    },
    "kill": {
        "sig": (VALUE, "SIGKILL", ("-s", "--signal")),
    },
    "exec": {
        "detach": (FLAG, False, ("-d", "--detach")),
        "interactive": (FLAG, False, ("-i", "--interactive")),
        "tty": (FLAG, False, ("-t", "--tty")),
        "env": (MULTI, [], ("-e", "--env")),
        "user": (VALUE, None, ("-u", "--user")),
        "workdir": (VALUE, None, ("-w", "--workdir")),
        "privileged": (FLAG, False, ("--privileged",)),
        "detach_keys": (VALUE, "", ("--detach-keys",)),
    },
}
"""Options of every hot verb."""

ONE, REST, REST_REQUIRED = "one", "rest", "rest+"
ARGUMENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "run": (("image", ONE), ("cmd", REST)),
    "create": (("image", ONE), ("cmd", REST)),
    "exec": (("container", ONE), ("cmd", REST_REQUIRED)),
    "ps": (),
    "rm": (("containers", REST_REQUIRED),),
    "stop": (("containers", REST_REQUIRED),),
    "start": (("containers", REST_REQUIRED),),
    "kill": (("containers", REST_REQUIRED),),
}
"""Positional parameters: required single ones, then one taking the rest (None when empty, or required)."""

INTERSPERSED = {"run": False, "create": False, "exec": False}
"""Verbs whose options must come before the first argument (default: anywhere)."""


class Fallback(Exception):
    """The hot parser does not handle this command line; typer will."""


def parse(verb: str, args: list[str]) -> dict[str, Any]:
    """Parse the arguments of ``verb`` into ``{parameter: value}`` as typer would pass them.

    Raises ``Fallback`` for anything it leaves to typer (see module docstring).
    """
    table = OPTIONS[verb]
    by_name: dict[str, str] = {}
    for dest, (_kind, _default, names) in table.items():
        for n in names:
            by_name[n] = dest
    values: dict[str, Any] = {dest: (list(d) if kind == MULTI else d) for dest, (kind, d, _n) in table.items()}
    positional: list[str] = []
    interspersed = INTERSPERSED.get(verb, True)
    rest = list(args)

    def store(dest: str, value: str | None) -> None:
        kind = table[dest][0]
        if kind == FLAG:
            values[dest] = True
        elif kind == MULTI:
            values[dest].append(value)
        elif kind == INT:
            try:
                values[dest] = int(value)  # type: ignore[arg-type]
            except ValueError:
                raise Fallback from None
        elif kind == FLOAT:
            try:
                values[dest] = float(value)  # type: ignore[arg-type]
            except ValueError:
                raise Fallback from None
        else:
            values[dest] = value

    while rest:
        arg = rest.pop(0)
        if arg == "--":
            break
        if arg.startswith("-") and len(arg) > 1:
            name, eq, explicit = arg.partition("=")
            long_dest = by_name.get(name) if name.startswith("--") else None
            if long_dest is not None:  # --name value, --name=value, --flag
                dest = long_dest
                if table[dest][0] == FLAG:
                    if eq:
                        raise Fallback  # "--rm=true": typer reports it
                    store(dest, None)
                elif eq:
                    store(dest, explicit)
                elif rest:
                    store(dest, rest.pop(0))
                else:
                    raise Fallback  # typer: Option '--name' requires an argument
                continue
            if arg.startswith("--"):
                raise Fallback  # unknown long option, --help included
            # a group of short options: -dit, -eFOO=1, -e FOO=1 (and -e=x gives "=x", as click does)
            i = 1
            while i < len(arg):
                short_dest = by_name.get("-" + arg[i])
                if short_dest is None:
                    raise Fallback
                dest = short_dest
                i += 1
                if table[dest][0] == FLAG:
                    store(dest, None)
                    continue
                if i < len(arg):
                    store(dest, arg[i:])
                elif rest:
                    store(dest, rest.pop(0))
                else:
                    raise Fallback
                break
            continue
        if interspersed:
            positional.append(arg)
            continue
        rest.insert(0, arg)
        break
    positional += rest
    for name, kind in ARGUMENTS[verb]:
        if kind == ONE:
            if not positional:
                raise Fallback  # typer: Missing argument 'IMAGE'
            values[name] = positional.pop(0)
        else:
            if kind == REST_REQUIRED and not positional:
                raise Fallback  # typer: Missing argument 'CMD...'
            values[name] = positional or None
            positional = []
    if positional:
        raise Fallback  # typer: Got unexpected extra argument
    return values


def _run(verb: str, v: dict[str, Any]) -> int:
    from cli import runner

    if verb == "run":
        image, cmd, detach = v.pop("image"), v.pop("cmd"), v.pop("detach")
        return runner.run(image, cmd, detach=detach, **v)
    if verb == "create":
        from cli import output
        from common import errors

        image, cmd = v.pop("image"), v.pop("cmd")
        try:
            created = runner.create(runner.create_request(image, cmd, **v))
        except errors.DockyardError as exc:
            output.fail(exc, runner.EXIT_ENGINE)
        output.line(created["id"])
        return 0
    if verb == "ps":
        return runner.ps(**v)
    if verb == "rm":
        return runner.each(
            v["containers"], "execution.remove", {"force": v["force"], "volumes": v["volumes"]}, timeout_s=120
        )
    if verb == "stop":
        return runner.each(v["containers"], "execution.stop", runner.stop_body(v["time_s"], v["sig"]), timeout_s=None)
    if verb == "kill":
        return runner.each(v["containers"], "execution.kill", {"signal": v["sig"]})
    if verb == "exec":
        container, cmd = v.pop("container"), v.pop("cmd")
        return runner.exec_(container, cmd, **v)
    if verb == "start":
        if v["attach"]:
            if len(v["containers"]) != 1:
                raise Fallback  # typer prints that error
            return runner.start_attached(v["containers"][0], interactive=v["interactive"])
        return runner.each(v["containers"], "execution.start", {})
    raise Fallback


def main(argv: list[str]) -> int | None:
    """Run ``argv`` (without the program name) if it is a hot command; its exit code, or None."""
    if not argv or argv[0] not in OPTIONS:
        return None
    verb = argv[0]
    try:
        values = parse(verb, argv[1:])
    except Fallback:
        return None
    try:
        return _run(verb, values)
    except Fallback:
        return None
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130

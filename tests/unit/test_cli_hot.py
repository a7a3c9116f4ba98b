"""The CLI's hot parser (``cli.hot``) and the typer commands read command lines alike.

Each hot verb's option table is checked against the typer command's parameters (names,
kinds, defaults), and a set of command lines is parsed by both: the values handed to the
command must be equal, and whatever typer rejects or answers with help must make the
hot parser step aside (``Fallback``). The hot path must also stay free of typer,
pydantic and pyzmq.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import typer.main

from cli import app as app_module
from cli import hot
from tests.harness import PROJECT

app_module._register_all()
_COMMAND = typer.main.get_command(app_module.app)


def _typer_params(verb: str, args: list[str]) -> dict[str, Any]:
    command = _COMMAND.commands[verb]  # type: ignore[attr-defined]
    ctx = command.make_context(verb, list(args))
    params = dict(ctx.params)
    if params.get("cmd") == ():
        params["cmd"] = None
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}


@pytest.mark.parametrize("verb", sorted(hot.OPTIONS))
def test_option_tables_match_the_typer_commands(verb: str) -> None:
    command = _COMMAND.commands[verb]  # type: ignore[attr-defined]
    options = {p.name: p for p in command.params if p.param_type_name == "option" and p.name != "help"}
    table = hot.OPTIONS[verb]
    assert set(table) == set(options)
    for dest, (kind, default, names) in table.items():
        p = options[dest]
        assert tuple(p.opts) == names and not p.secondary_opts, dest
        assert (kind == hot.FLAG) == bool(p.is_flag), dest
        assert (kind == hot.MULTI) == bool(p.multiple), dest
        assert (default if kind != hot.MULTI else []) == (p.default if p.default != () else []), dest
    arguments = [(p.name, p.nargs, p.required) for p in command.params if p.param_type_name == "argument"]
    kinds = {hot.ONE: (1, True), hot.REST: (-1, False), hot.REST_REQUIRED: (-1, True)}
    assert arguments == [(name, *kinds[kind]) for name, kind in hot.ARGUMENTS[verb]]
    interspersed = (command.context_settings or {}).get("allow_interspersed_args", True)
    assert hot.INTERSPERSED.get(verb, True) == interspersed


AGREE = [
    ("run", ["busybox"]),
    ("run", ["--rm", "busybox", "true"]),
    ("run", ["-d", "--name", "web", "busybox", "sleep", "60"]),
    ("run", ["--name=web", "-it", "busybox", "sh"]),
    ("run", ["-dit", "--rm", "busybox"]),
    ("run", ["-eA=1", "-e", "B=2", "--env=C=3", "-e=D", "busybox", "env"]),
    ("run", ["-de", "A=1", "busybox"]),
    ("run", ["--cpus", "1.5", "-m", "32m", "-c", "512", "--pids-limit", "-1", "busybox"]),
    ("run", ["-v", "/tmp:/data:ro", "--tmpfs", "/run", "--mount", "type=tmpfs,target=/x", "busybox"]),
    ("run", ["--rm", "busybox", "ls", "-l", "--rm", "--", "x"]),
    ("run", ["--", "busybox", "echo", "hi"]),
    ("run", ["-h", "myhost", "-u", "1000:1000", "-w", "/tmp", "busybox", "id"]),
    ("run", ["--name", "a", "--name", "b", "busybox"]),
    ("run", ["--network", "host", "--net=none", "--restart", "on-failure:3", "busybox"]),
    ("run", ["--entrypoint", "", "--stop-signal", "SIGUSR1", "--stop-timeout", "3", "busybox"]),
    ("run", ["--cap-add", "NET_ADMIN", "--cap-drop", "ALL", "--privileged", "--security-opt", "x", "busybox"]),
    ("run", ["--log-opt", "max-size=1m", "--runtime", "crun", "--group-add", "10", "--init", "busybox"]),
    ("run", ["-l", "a=b", "--label", "c", "--env-file", "/dev/null", "--read-only", "busybox", "-"]),
    ("create", ["--name", "c", "busybox", "echo", "hi"]),
    ("ps", []),
    ("ps", ["-a", "-q"]),
    ("ps", ["-aq", "--no-trunc", "-f", "status=exited", "--filter", "name=x", "-n", "3", "--format", "json"]),
    ("ps", ["-n3"]),
    ("ps", ["--format", "table {{.ID}}\\t{{.Names}}", "-q"]),
    ("rm", ["a"]),
    ("rm", ["-f", "a", "b"]),
    ("rm", ["a", "-fv", "b"]),
    ("rm", ["--", "-f"]),
    ("stop", ["-t", "0", "a"]),
    ("stop", ["a", "--time=5", "-s", "SIGKILL", "b"]),
    ("stop", ["--timeout", "1", "a"]),
    ("start", ["a", "b"]),
    ("start", ["-ai", "a"]),
    ("kill", ["a"]),
    ("kill", ["-s", "TERM", "a", "b"]),
    ("exec", ["c", "true"]),
    ("exec", ["-it", "c", "sh", "-c", "echo -n hi"]),
    ("exec", ["-d", "-e", "A=1", "-u", "1000", "-w", "/tmp", "--privileged", "c", "ls", "-l"]),
    ("exec", ["--detach-keys=ctrl-x", "c", "--", "true"]),
]


@pytest.mark.parametrize(("verb", "args"), AGREE)
def test_hot_parser_reads_command_lines_as_typer_does(verb: str, args: list[str]) -> None:
    assert hot.parse(verb, list(args)) == _typer_params(verb, args)


FALL_BACK = [
    ("run", ["--help"]),
    ("run", ["--rm", "--help", "busybox"]),
    ("run", []),
    ("run", ["--rm"]),
    ("run", ["--no-such-option", "busybox"]),
    ("run", ["-Z", "busybox"]),
    ("run", ["--cpus", "lots", "busybox"]),
    ("run", ["--pids-limit", "1.5", "busybox"]),
    ("run", ["--rm=true", "busybox"]),
    ("run", ["--name"]),
    ("ps", ["extra"]),
    ("ps", ["-n", "x"]),
    ("ps", ["--help"]),
    ("rm", []),
    ("rm", ["-x", "a"]),
    ("stop", ["-t"]),
    ("stop", ["-t", "soon", "a"]),
    ("start", []),
    ("exec", ["c"]),
    ("exec", []),
    ("exec", ["--help"]),
    ("exec", ["--nope", "c", "true"]),
]


@pytest.mark.parametrize(("verb", "args"), FALL_BACK)
def test_hot_parser_leaves_errors_and_help_to_typer(verb: str, args: list[str]) -> None:
    with pytest.raises(hot.Fallback):
        hot.parse(verb, list(args))
    if "--help" not in args:
        with pytest.raises(Exception) as info:
            _typer_params(verb, args)
        assert "Exit" not in type(info.value).__name__


def test_other_commands_are_not_hot() -> None:
    for argv in ([], ["images"], ["container", "ps"], ["--help"], ["logs", "x"], ["top", "c"]):
        if argv and argv[0] in hot.OPTIONS:
            continue
        assert hot.main(argv) is None


def test_help_of_a_hot_verb_comes_from_typer() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "run", "--help"], cwd=PROJECT, capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == 0
    assert b"Usage:" in proc.stdout and b"--rm" in proc.stdout


def test_bad_option_of_a_hot_verb_is_reported_by_typer() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "ps", "--nope"], cwd=PROJECT, capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == 2
    assert b"No such option" in proc.stderr


HEAVY = ("typer", "click", "pydantic", "zmq", "msgpack", "typing", "socket", "enum", "re", "contextlib",
         "collections", "functools", "datetime", "json", "asyncio", "signal", "subprocess", "os", "posixpath",
         "_collections_abc", "struct")  # fmt: skip
"""Modules the hot path must not import: each costs a CLI ~1-10 ms of its start (a ``contextlib``
in the RPC client once cost every ``run`` ~7 ms; ``os`` with ``_collections_abc`` and
``posixpath`` ~1 ms: ``common.posixos``)."""


def test_hot_path_imports_nothing_heavy() -> None:
    """As the console script runs it: ``python -S`` with the checkout on ``sys.path`` (no ``site``)."""
    code = (
        "import sys\n"
        f"sys.path[1:1] = [{str(PROJECT)!r}]\n"
        "import cli.__main__\n"
        "from common import codec, endpoints, trace\n"
        "codec.use_pure()\n"
        "from cli import connect, hot, runner\n"
        "hot.parse('run', ['--rm', '-e', 'A=1', '-e', 'HOME', 'busybox', 'true'])\n"
        "runner.create_request('busybox', ['true'], rm=True, env=['A=1', 'HOME'])\n"
        "endpoints.control_endpoint('execution'), connect.namespace(), trace.mark('x')\n"
        "codec.decode(codec.encode({'a': [1, 2.5, b'x', None]}))\n"
        "from common.rpc import client, protocol, zmtp\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=PROJECT, capture_output=True, timeout=60, check=True)
    assert proc.stdout.decode().strip() == ""

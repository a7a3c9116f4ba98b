"""``dockyard ... --help`` reads like docker's and renders for every command.

Regression: typer showed ``<list[str]>``, ``<str>`` and ``<bool>`` as metavars (docker
shows ``list``, ``string`` and nothing for a flag), and ``pull --help`` crashed on the
help text ``os/arch[/variant]`` (rich markup took ``[/variant]`` for a closing tag).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
import typer.main

from cli import app as app_module

ROOT = app_module.command()


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def _help(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> str:
    ctx = typer.Context(ROOT, info_name="dockyard")
    cmd = ROOT
    for name in path:
        cmd = cmd.commands[name]
        ctx = typer.Context(cmd, info_name=name, parent=ctx)
    capsys.readouterr()
    text = cmd.get_help(ctx) or ""
    return text + capsys.readouterr().out


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("TERM", "dumb")


@pytest.mark.parametrize("path", [p for p, _c in _commands(ROOT)], ids=lambda p: " ".join(p) or "dockyard")
def test_help_renders_without_type_metavars(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(path, capsys)
    assert "--help" in text
    leaked = re.findall(r"<(?:bool|str|int|float|list\[[^>]*\]|[a-z]+)>", text)
    assert not leaked, f"dockyard {' '.join(path)} --help shows {leaked}"


def _row(text: str, option: str) -> str:
    return next(line for line in text.splitlines() if re.search(rf"\s{re.escape(option)}[\s,]", line))


def test_run_help_names_values_like_docker(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(("run",), capsys)
    assert re.search(r"--env\s+-e\s+list\s+set an environment", _row(text, "--env"))
    assert re.search(r"--name\s+string\s+assign", _row(text, "--name"))
    assert re.search(r"--cpus\s+decimal\s", _row(text, "--cpus"))
    assert re.search(r"--pids-limit\s+int\s", _row(text, "--pids-limit"))
    assert re.search(r"--detach\s+-d\s+run in the background", _row(text, "--detach"))  # a flag: no word
    assert re.search(r"--help\s+Show this message", _row(text, "--help"))
    assert re.search(r"cmd\.\.\.\s+list\s+command and arguments", text)


def test_top_level_help_has_no_bool_metavar(capsys: pytest.CaptureFixture[str]) -> None:
    assert re.search(r"--help\s+Show this message", _row(_help((), capsys), "--help"))


def test_readable_help_changes_no_option_name_or_value() -> None:
    plain = typer.main.get_command(app_module.app)  # a fresh tree, without readable_help

    def shape(cmd: Any) -> list[tuple[Any, ...]]:
        return [(p.name, tuple(p.opts), tuple(p.secondary_opts), p.multiple, p.nargs, p.required) for p in cmd.params]

    for path, cmd in _commands(ROOT):
        other = plain
        for name in path:
            other = other.commands[name]
        assert shape(cmd) == shape(other), path
    run = ROOT.commands["run"]
    ctx = run.make_context("run", ["-d", "-e", "A=1", "--cpus", "1.5", "busybox", "ls", "-l"])
    assert (ctx.params["detach"], list(ctx.params["env"]), ctx.params["cpus"]) == (True, ["A=1"], 1.5)
    assert (ctx.params["image"], list(ctx.params["cmd"])) == ("busybox", ["ls", "-l"])

"""The ``dockyard`` command tree (typer).

One typer sub-app per noun (``image``, ``container``, ``snapshot``, ``task``,
``event``) plus the Docker-style short verbs (``run``, ``ps``, ``pull``,
``logs``, ``exec``, ``rm``, ``images`` ...). Each ``cli/<noun>.py`` module
exposes ``register(app)``; this module wires them explicitly, so importing a
module never registers anything by side effect.

Help reads like docker's: an option's value is named by a word (``string``, ``list``,
``int``, ``decimal``, its choices, or a metavar the command gives such as
``[REPOSITORY[:TAG]]``) instead of typer's ``<list[str]>``, and a flag shows none
(``readable_help``).
"""

from __future__ import annotations

import sys
from typing import Any

import typer
import typer.core
import typer.main

from cli import output
from common import errors

app = typer.Typer(
    name="dockyard",
    help="Dockyard: a container engine (image, snapshot, execution, events and gateway services).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_all() -> None:
    from cli import containers, images, snapshots, system

    for module in (system, images, containers, snapshots):
        module.register(app)


def _value_word(param: typer.core.TyperArgument | typer.core.TyperOption) -> str:
    """Docker's name for the value of ``param``: ``list``, ``int``, ``decimal``, ``a|b``, ``string``."""
    desc = param.type_descriptor
    if param.multiple or param.nargs != 1 or desc.is_list:
        return "list"
    if desc.is_choice:
        return "|".join(str(getattr(c, "value", c)) for c in desc.choices or ())
    if desc.annotation is int:
        return "int"
    if desc.annotation is float:
        return "decimal"
    return "string"


class _Argument(typer.core.TyperArgument):
    """A positional parameter whose help shows docker's word for its value (``string``, ``list``);
    a metavar the command gives is its name (the first column) already."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return _value_word(self)


def readable_help(command: Any) -> Any:
    """Give every parameter of ``command`` and its subcommands a readable metavar; return it.

    Options (``--help`` included): a flag shows nothing, a value option docker's word
    (``_value_word``) unless the command named it. Arguments keep their name and show the
    word in the type column. Only help text changes: names, parsing and values stay typer's.
    """
    params = list(command.params)
    help_option = command.get_help_option(typer.Context(command))
    if help_option is not None:
        params.append(help_option)
    for param in params:
        if isinstance(param, typer.core.TyperOption):
            if param.is_flag:
                param.metavar = ""
            elif param.metavar is None:
                param.metavar = _value_word(param)
        elif type(param) is typer.core.TyperArgument:
            param.__class__ = _Argument
    for sub in getattr(command, "commands", {}).values():
        readable_help(sub)
    return command


def command() -> Any:
    """The whole ``dockyard`` command tree (typer's click command), with readable help."""
    _register_all()
    return readable_help(typer.main.get_command(app))


def run() -> None:
    """Parse ``sys.argv`` and run the command; DockyardErrors end as one line."""
    cli = command()
    from common import trace

    trace.mark("parsing")
    try:
        cli(standalone_mode=True)
    except errors.DockyardError as exc:
        output.fail(exc)
    except BrokenPipeError:
        raise
    except OSError as exc:  # a path no command checked: still one line naming it, no traceback
        where = f" '{exc.filename}'" if exc.filename else ""
        output.fail(f"{exc.strerror or exc}{where}")
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        raise SystemExit(130) from None

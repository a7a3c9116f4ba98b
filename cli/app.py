"""The ``dockyard`` command tree (typer).

One typer sub-app per noun (``image``, ``container``, ``snapshot``, ``task``,
``event``) plus the Docker-style short verbs (``run``, ``ps``, ``pull``,
``logs``, ``exec``, ``rm``, ``images`` ...). Each ``cli/<noun>.py`` module
exposes ``register(app)``; this module wires them explicitly, so importing a
module never registers anything by side effect.
"""

from __future__ import annotations

import sys

import typer

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


def run() -> None:
    """Parse ``sys.argv`` and run the command; DockyardErrors end as one line."""
    _register_all()
    from common import trace

    trace.mark("parsing")
    try:
        app(standalone_mode=True)
    except errors.DockyardError as exc:
        output.fail(exc)
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        raise SystemExit(130) from None

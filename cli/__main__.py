"""Entry point of the ``dockyard`` command (console script and ``python -m cli``)."""

from __future__ import annotations


def main() -> None:
    """Run the CLI; see ``cli.app`` for the command tree."""
    from common import trace

    trace.set_process("cli")
    trace.mark("main")
    from cli.app import run

    run()


if __name__ == "__main__":
    main()

"""Entry point of the ``dockyard`` command (console script and ``python -m cli``).

The hot verbs (``run``, ``ps``, ``rm``, ``stop``, ``start`` ...) go through ``cli.hot``,
which imports only what they need, and end with ``os._exit`` once stdout and stderr
are flushed (tearing down the interpreter would cost more than the command did);
everything else, and anything the hot parser leaves alone (``--help``, errors), goes
to the typer app in ``cli.app``.
"""

from __future__ import annotations

import posix
import sys

EXIT_SIGPIPE = 128 + 13
"""The status a shell shows for a CLI killed by SIGPIPE, as the docker CLI is (the typer
commands exit through click, which ends a broken pipe with 1)."""


def _exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    posix._exit(code)


def main() -> None:
    """Run the CLI; see ``cli.app`` for the command tree."""
    from common import trace

    trace.set_process("cli")
    trace.mark("main")
    from common import codec

    codec.use_pure()  # a command's few small messages: importing msgpack would cost more
    from cli import hot

    try:
        code = hot.main(sys.argv[1:])
    except SystemExit as exc:  # output.fail: the message is printed already
        code = exc.code if isinstance(exc.code, int) else 1
    except BrokenPipeError:  # stdout's reader went away (`| head`); sockets raise ZmtpError instead
        devnull = posix.open("/dev/null", posix.O_WRONLY)
        posix.dup2(devnull, sys.stdout.fileno())  # what is still buffered goes nowhere, quietly
        code = EXIT_SIGPIPE
    if code is not None:
        trace.mark("exit")
        _exit(code)
    if sys.flags.no_site:  # the console script skipped `site`: the full CLI gets its .pth files
        import site
        import sysconfig

        site.addsitedir(sysconfig.get_path("purelib"))
    from cli.app import run

    run()


if __name__ == "__main__":
    main()

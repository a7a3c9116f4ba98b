"""The user's files: every path a CLI command reads (``load -i``, ``import``, ``--env-file``)
or writes (``save -o``, ``export -o``) is opened here, so every command fails the same way.

A path that cannot be used ends the command before anything is sent to a service, with one
line naming the user's path (never our temporary name) and the system's reason:
``error: cannot write '/nonexistent/dir/x.tar': No such file or directory``. An output
is written to a temporary name beside the target (``<path>.tmp-<pid>``), fsynced and
renamed over it, so a failure leaves neither a half-written archive nor the temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys

from cli import output

TYPE_CHECKING = False  # typing costs the CLI's hot path an import; type checkers read this as typing's
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import BinaryIO, NoReturn


def path_error(verb: str, path: str, exc: OSError, what: str = "") -> str:
    """``cannot <verb> [<what> ]'<path>': <reason>`` (the reason is the system's, e.g. ``Is a directory``)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"cannot {verb} {what + ' ' if what else ''}'{path}': {reason}"


def fail_path(verb: str, path: str, exc: OSError, what: str = "", code: int = 1) -> NoReturn:
    """Print :func:`path_error` as the command's one error line and exit with ``code``."""
    output.fail(path_error(verb, path, exc, what), code)


def _is_dir_error() -> OSError:
    return OSError(errno.EISDIR, os.strerror(errno.EISDIR))


def open_input(path: str | None, what: str = "") -> BinaryIO:
    """Open ``path`` for reading (stdin for None or ``-``); fail naming it when it cannot be read.

    A directory is refused at once (``open`` would succeed on it with ``O_RDONLY`` on some
    systems and fail only at the first read).
    """
    if path is None or path == "-":
        if sys.stdin.isatty():
            output.fail("requested load from stdin, but stdin is empty (use -i FILE)")
        return sys.stdin.buffer
    if os.path.isdir(path):
        fail_path("read", path, _is_dir_error(), what)
    try:
        return open(path, "rb")
    except OSError as exc:
        fail_path("read", path, exc, what)


def read_text(path: str, what: str = "", code: int = 1) -> str:
    """The whole of a small text file (UTF-8), failing (exit ``code``) naming ``path`` when it cannot be read."""
    if os.path.isdir(path):
        fail_path("read", path, _is_dir_error(), what, code)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        fail_path("read", path, exc, what, code)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        output.fail(f"cannot read {what + ' ' if what else ''}'{path}': invalid UTF-8 at byte {exc.start}", code)


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[BinaryIO]:
    """Yield a file that becomes ``path`` when the block ends without an exception.

    Checked before anything is written: ``path`` must not be a directory and its directory
    must accept a new file (the temporary one is created at once). The data is fsynced and
    renamed over ``path``; on any error the temporary file is removed. OS errors end the
    command naming ``path``; other exceptions (a service's error) propagate after the clean-up.
    """
    if os.path.isdir(path):
        fail_path("write", path, _is_dir_error())
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        f = open(tmp, "xb")  # noqa: SIM115 - closed below
    except OSError as exc:
        fail_path("write", path, exc)
    done = False
    try:
        try:
            with f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            done = True
        except OSError as exc:
            if isinstance(exc, BrokenPipeError):
                raise
            fail_path("write", path, exc)
    finally:
        if not done:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

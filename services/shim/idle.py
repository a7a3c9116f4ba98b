"""Where the shim's native idle monitor lives, and how to build it.

The monitor (``idle.c``, see its header for the contract) is what an idle shim
``execve``s into to cost ~0.2 MB instead of a Python interpreter; ``deploy/setup.sh``
compiles it into the venv as ``bin/dockyard-shim-idle``.
"""

from __future__ import annotations

import os
import subprocess
import sys

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "idle.c")
BINARY_NAME = "dockyard-shim-idle"


def monitor_path() -> str | None:
    """Return the absolute path of the compiled monitor in this venv, or None if it is missing or not executable.

    The path is ``<sys.prefix>/bin/dockyard-shim-idle`` (``sys.prefix`` is the venv).
    """
    path = os.path.join(sys.prefix, "bin", BINARY_NAME)
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


def asleep(pid: int) -> bool:
    """Whether the process ``pid`` is a shim sleeping as this monitor (its executable is it)."""
    try:
        return os.readlink(f"/proc/{pid}/exe").endswith("/" + BINARY_NAME)
    except OSError:
        return False


def build(out: str) -> None:
    """Compile ``idle.c`` with ``cc -O2 -Wall -Wextra`` into the executable ``out``.

    Raises RuntimeError carrying cc's stderr if it fails; FileNotFoundError if
    there is no ``cc`` on PATH.
    """
    proc = subprocess.run(
        ["cc", "-O2", "-Wall", "-Wextra", "-o", out, SOURCE], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"cc failed to build {SOURCE}: {proc.stderr.strip()}")

"""A pre-imported template process that forks shims (like a zygote).

Starting a shim in a fresh interpreter costs a few hundred milliseconds of imports
(asyncio, pyzmq, pydantic); a shim forked from a process that already imported them
is ready in a few milliseconds and shares those pages copy-on-write with its siblings.

``python -m services.shim.template <socket>`` imports ``services.shim.main``, freezes
the garbage collector's view of what it imported (``gc.freeze``, so children do not
touch and copy those pages), and serves launch requests on a unix socket: one JSON
line ``{"namespace", "container_id", "bundle"}`` per connection. For each it forks,
the child starts a new session and forks again (so the shim's parent is init, not the
template nor the execution service), and the grandchild runs ``serve()`` with the
connection as its ready fd: the caller reads the shim's report (``services.shim.main``)
from the connection itself. The template holds no threads, event loop or zmq context,
so forking is safe; it dies with its parent (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import signal
import socket
import sys
from typing import Any

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15

_settings: Any = None
"""The ``Settings`` every shim uses, read once by the template (``main``)."""


def _prctl(option: int, arg: int | bytes) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(option, arg, 0, 0, 0)


def _become_shim(conn: socket.socket, listener: socket.socket, request: dict[str, str]) -> None:
    """In the grandchild: detach stdio, then serve until the task is deleted."""
    listener.close()
    os.setsid()
    if os.fork() != 0:
        os._exit(0)
    from common import trace

    trace.set_process("shim")
    trace.mark("forked")
    bundle = request["bundle"]
    _prctl(PR_SET_PDEATHSIG, 0)
    _prctl(PR_SET_NAME, b"dockyard-shim")
    devnull = os.open(os.devnull, os.O_RDWR)
    log_fd = os.open(os.path.join(bundle, "shim.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(log_fd, 2)
    os.close(devnull)
    os.close(log_fd)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    code = 1
    try:
        from services.shim.main import serve

        ready = os.dup(conn.fileno())
        conn.close()
        code = trace.profiled(serve, request["namespace"], request["container_id"], bundle, _settings, ready)
    finally:
        os._exit(code)


def _warm_lazy_imports() -> None:
    """Load now what a shim would otherwise load after the fork, at each start."""
    import common.mount  # noqa: F401 - imported inside services.shim.mount
    from services.shim import mount

    mount._lib()  # ctypes.util.find_library runs `ldconfig -p` in a child process


def _handle(conn: socket.socket, listener: socket.socket) -> None:
    data = b""
    while not data.endswith(b"\n") and len(data) < 65536:
        chunk = conn.recv(4096)
        if not chunk:
            return
        data += chunk
    try:
        request = json.loads(data)
        for key in ("namespace", "container_id", "bundle"):
            if not isinstance(request.get(key), str):
                raise ValueError(key)
    except ValueError:
        conn.sendall(b'{"ok": false, "error": "bad launch request", "exit_status": 128}\n')
        return
    pid = os.fork()
    if pid == 0:
        try:
            _become_shim(conn, listener, request)
        finally:
            os._exit(1)
    os.waitpid(pid, 0)  # the intermediate child exits at once


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: python -m services.shim.template <socket path>\n")
        return 2
    path = argv[0]
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:
        return 0  # our parent is already gone
    global _settings
    import services.shim.main  # noqa: F401 - the point: import everything once
    from common import logsetup
    from common.rpc.server import warm_handlers
    from common.settings import Settings
    from services.shim.service import Shim

    _settings = Settings()  # the shims' environment is ours
    logsetup.configure("shim", _settings.log_level)
    warm_handlers(Shim)
    _warm_lazy_imports()
    gc.collect()
    gc.freeze()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        conn, _ = listener.accept()
        try:
            _handle(conn, listener)
        except OSError:
            pass
        finally:
            conn.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A pre-imported template process that forks shims (like a zygote).

Starting a shim in a fresh interpreter costs a few hundred milliseconds of imports
(asyncio, pyzmq, pydantic); a shim forked from a process that already imported them
is ready in a few milliseconds and shares those pages copy-on-write with its siblings.

``python -m services.shim.template <socket>`` imports ``services.shim.main``, freezes
the garbage collector's view of what it imported (``gc.freeze``, so children do not
touch and copy those pages), and serves launch requests on a unix socket: one JSON
line ``{"namespace", "container_id", "bundle"}`` per connection. A shim is a child of
the template in a session of its own (``setsid``: no signal to the template's or the
execution service's process group reaches it) and runs ``serve()`` with the connection as
its ready fd: the caller reads the shim's report (``services.shim.main``) from the
connection itself. The template ignores ``SIGCHLD``, so the kernel reaps its exited
shims; it dies with its parent (``PR_SET_PDEATHSIG``, which a forked child does not
inherit) and its live shims are then re-parented to init, so no service is ever a
container's ancestor for long. The template holds no threads, event loop or zmq context,
so forking is safe.

Forking costs ~3 ms a time here (a 40 MB process) and as much again when the forked
copy exits, so a shim is forked once (not twice, as a daemon's double fork would), and
the template keeps one *spare*: a shim forked ahead of time (when no request came for
``SPARE_AFTER_S``), detached already, its event loop made and its zmq context started,
waiting on a socket pair for one request and the connection's fd (``SCM_RIGHTS``). A
request goes to the spare when there is one, else is forked on demand as before. A spare
(``comm`` ``dockyard-spare``) exits when the template's end of its socket pair closes, so
none outlives the template.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import socket
import sys
from typing import Any

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15

_settings: Any = None
"""The ``Settings`` every shim uses, read once by the template (``main``)."""

SPARE_ACK_S = 10.0
"""How long the template waits for a spare to acknowledge a request (``_hand_to_spare``)."""

SPARE_AFTER_S = 0.05
"""Idle time after which the template forks its next spare (not while a start is on its way)."""


def _prctl(option: int, arg: int | bytes) -> None:
    from services.shim.mount import libc

    libc().prctl(option, arg, 0, 0, 0)


def _detach(*inherited: socket.socket) -> None:
    """In the template's child (a shim to be): close the template's sockets, start a new session."""
    for sock in inherited:
        sock.close()
    os.setsid()


def _become_shim(conn: socket.socket, request: dict[str, str], loop: Any = None) -> None:
    """In the shim (the template's child): detach stdio, then serve until the task is deleted."""
    from common import trace

    trace.set_process("shim")
    trace.mark("forked")
    bundle = request["bundle"]
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
        code = trace.profiled(serve, request["namespace"], request["container_id"], bundle, _settings, ready, loop)
    except BaseException:
        import traceback

        traceback.print_exc()  # to the bundle's shim.log; serve() reports its own failures
    finally:
        os._exit(code)


def _parse(data: bytes) -> dict[str, str]:
    """A launch request; raises ``ValueError`` if it is not one."""
    request = json.loads(data)
    for key in ("namespace", "container_id", "bundle"):
        if not isinstance(request.get(key), str):
            raise ValueError(key)
    return dict(request)


def _be_spare(lifeline: socket.socket) -> None:
    """In a spare (a detached child of the template): make the event loop, wait for one request, serve it."""
    import asyncio

    _prctl(PR_SET_NAME, b"dockyard-spare")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)  # not the template's stdout: the execution service reads that one
    os.close(devnull)
    loop = asyncio.new_event_loop()
    _start_zmq()
    try:
        data, fds, _, _ = socket.recv_fds(lifeline, 65536, 1)
    except OSError:
        os._exit(0)
    if data:
        with contextlib.suppress(OSError):
            lifeline.send(b"k")  # taken (see _hand_to_spare)
    lifeline.close()
    if not data or len(fds) != 1:
        os._exit(0)  # the template is gone (or sent nonsense): nothing to serve
    conn = socket.socket(fileno=fds[0])
    try:
        request = _parse(data)
    except ValueError:
        os._exit(1)
    _become_shim(conn, request, loop)


def _start_zmq() -> None:
    """Make the shim's zmq context and start its I/O threads (libzmq does at the first socket):
    a spare does it while nobody waits, a shim forked on demand at its first socket."""
    import zmq

    from common.rpc import zasync

    zmq.Context.shadow(zasync.Context.instance().underlying).socket(zmq.DEALER).close(linger=0)


def _fork_spare(listener: socket.socket) -> socket.socket | None:
    """Fork a spare; return the template's end of its socket pair (None if the fork failed)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        pid = os.fork()
    except OSError:
        ours.close()
        theirs.close()
        return None
    if pid == 0:
        try:
            _detach(listener, ours)
            _be_spare(theirs)
        finally:
            os._exit(1)
    theirs.close()
    return ours


def _hand_to_spare(spare: socket.socket, conn: socket.socket, data: bytes) -> bool:
    """Give the request and its connection to the spare; False if the spare is gone.

    The spare acknowledges with one byte: a spare killed a moment before may still have its
    end of the pair open (its threads are still exiting), so the send succeeds and only the
    end of the pair (no byte) tells that nobody took the request (it is then forked on demand,
    on the same connection). A spare that does not answer within ``SPARE_ACK_S`` (a very
    loaded host) is taken to have the request: serving it twice would be worse."""
    try:
        socket.send_fds(spare, [data], [conn.fileno()])
        spare.settimeout(SPARE_ACK_S)
        return spare.recv(1) == b"k"
    except TimeoutError:
        return True
    except OSError:
        return False


def _warm_lazy_imports() -> None:
    """Load now what a shim would otherwise load after the fork, at each start."""
    import common.mount  # noqa: F401 - imported inside services.shim.mount
    from common import codec
    from services.shim import mount, seccomp_cache

    mount.libc()
    seccomp_cache.warm()  # libseccomp's paths and uname, found once for every shim
    codec.load()  # msgpack, which the codec imports on first use


def _handle(conn: socket.socket, listener: socket.socket, spare: socket.socket | None) -> bool:
    """Serve one launch request; True when the caller drops ``spare`` (it took the request, or is dead)."""
    data = b""
    while not data.endswith(b"\n") and len(data) < 65536:
        chunk = conn.recv(4096)
        if not chunk:
            return False
        data += chunk
    try:
        request = _parse(data)
    except ValueError:
        conn.sendall(b'{"ok": false, "error": "bad launch request", "exit_status": 128}\n')
        return False
    if spare is not None and _hand_to_spare(spare, conn, data):
        return True
    pid = os.fork()
    if pid == 0:
        try:
            _detach(listener, *([spare] if spare is not None else []))
            _become_shim(conn, request)
        finally:
            os._exit(1)
    return spare is not None  # a spare that could not take it is dead: drop it too


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
    if _settings.shim_rehearsal:
        from services.shim.rehearsal import rehearse

        rehearse(_settings.state, _settings)
    gc.collect()
    gc.freeze()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # shims are our children: the kernel reaps them
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    spare: socket.socket | None = None
    while True:
        if spare is None and not select.select([listener], [], [], SPARE_AFTER_S)[0]:
            spare = _fork_spare(listener)
            continue
        conn, _ = listener.accept()
        try:
            if _handle(conn, listener, spare) and spare is not None:
                spare.close()
                spare = None
        except OSError:
            pass
        finally:
            conn.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

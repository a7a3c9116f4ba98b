"""services.shim.rehearsal: the template's rehearsal of a shim's first steps leaves nothing behind.

Each case runs in a fresh interpreter, as the template does before it forks shims (the test
process has zmq contexts and event loops of its own)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import endpoints
from tests.harness import PROJECT

_PROBE = """
import json, os, signal, sys, threading
sys.path[0:0] = [{project!r}]
import services.shim.main  # what the template imports first
from common.rpc import zasync
from common.settings import Settings
from services.shim import rehearsal

state = sys.argv[1]
tasks_before = sorted(os.listdir("/proc/self/task"))
fds_before = sorted(os.listdir("/proc/self/fd"))
sigchld_before = signal.getsignal(signal.SIGCHLD)
{before}
ok = rehearsal.rehearse(state, Settings(state=state))
try:
    os.waitpid(-1, os.WNOHANG)
    children = True
except ChildProcessError:
    children = False
print(json.dumps({{
    "ok": ok,
    "tasks": sorted(os.listdir("/proc/self/task")) == tasks_before,
    "threads": threading.active_count(),
    "fds": sorted(os.listdir("/proc/self/fd")) == fds_before,
    "sigchld": signal.getsignal(signal.SIGCHLD) == sigchld_before,
    "wakeup_fd": signal.set_wakeup_fd(-1),
    "zmq_context": zasync.Context._instance is not None,
    "children": children,
    "left": sorted(os.listdir(state)) if os.path.isdir(state) else None,
}}))
"""


def _probe(state: Path, before: str = "", timeout: float = 60) -> dict[str, object]:
    code = _PROBE.format(project=str(PROJECT), before=before)
    proc = subprocess.run(
        [sys.executable, "-c", code, str(state)], capture_output=True, timeout=timeout, check=True, cwd="/"
    )
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_rehearsal_goes_through_and_leaves_no_thread_fd_handler_child_or_file(tmp_path: Path) -> None:
    (tmp_path / "keep").write_text("a file of the state directory\n")
    got = _probe(tmp_path)
    assert got == {
        "ok": True,
        "tasks": True,  # libzmq's I/O threads are joined
        "threads": 1,
        "fds": True,
        "sigchld": True,
        "wakeup_fd": -1,
        "zmq_context": False,
        "children": False,  # the spawned child was reaped
        "left": ["keep"],
    }


def test_rehearsal_that_fails_is_skipped_and_leaves_nothing(tmp_path: Path) -> None:
    """A state directory it cannot make its work directory in (a file here): False, and the
    process is as before."""
    state = tmp_path / "a-file"
    state.write_text("not a directory\n")
    got = _probe(state)
    assert got["ok"] is False
    assert got["left"] is None and state.read_text() == "not a directory\n"
    assert got["tasks"] is True and got["fds"] is True and got["sigchld"] is True
    assert got["zmq_context"] is False and got["threads"] == 1


def test_rehearsal_refuses_in_a_process_with_a_zmq_context(tmp_path: Path) -> None:
    """It ends by terminating the zmq context it made: a process that has one keeps it."""
    got = _probe(tmp_path, before="zasync.Context.instance()\ntasks_before = sorted(os.listdir('/proc/self/task'))")
    assert got["ok"] is False
    assert got["zmq_context"] is True
    assert got["left"] == []


def test_leftovers_of_a_killed_rehearsal_are_removed(tmp_path: Path) -> None:
    """A template SIGKILLed mid-rehearsal left its work directory: the next one removes it,
    and not the one of a rehearsal still running (a live pid)."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f".rehearsal-{dead.pid}-abc").mkdir()
    (tmp_path / f".rehearsal-{dead.pid}-abc" / "outbox-0").write_text("x")
    live = tmp_path / f".rehearsal-{os.getpid()}-def"
    live.mkdir()
    got = _probe(tmp_path)
    assert got["ok"] is True
    assert got["left"] == [live.name]


def test_rehearsal_on_the_longest_state_path_a_shim_socket_allows_goes_through() -> None:
    """A state directory whose shim sockets just fit the unix limit (``<state>/s/<24 hex>``,
    up to 80 bytes of state): the rehearsal's endpoint is an abstract socket, so it goes
    through there too (a path in the state directory did not fit, and the bind it refused
    once hung the template, see the next test)."""
    base = tempfile.mkdtemp(prefix="dy-long-", dir="/tmp")
    try:
        state = Path(base, "x" * (80 - len(base) - 1))
        state.mkdir()
        assert len(endpoints.shim_endpoint("default", "c", {"DOCKYARD_STATE": str(state)})) <= len("ipc://") + 107
        got = _probe(state, timeout=30)
        assert got["ok"] is True
        assert got["left"] == []
        assert got["tasks"] is True and got["fds"] is True and got["sigchld"] is True
        assert got["zmq_context"] is False and got["threads"] == 1
    finally:
        shutil.rmtree(base)


_FAILING_BIND = """
from common.rpc import server as _server
_bind = _server.RpcServer.bind
def _failing_bind(self):
    _bind(self)
    raise OSError("injected: bind refused")
_server.RpcServer.bind = _failing_bind
"""


def test_a_step_that_fails_with_a_socket_open_is_skipped_not_stuck(tmp_path: Path) -> None:
    """A failed step that leaves its zmq socket open (a refused bind): the rehearsal is skipped
    at once and leaves nothing; ``zmq_ctx_term`` would wait for that socket for ever and the
    template would never fork a shim."""
    got = _probe(tmp_path, before=_FAILING_BIND, timeout=30)
    assert got["ok"] is False
    assert got["left"] == []
    assert got["tasks"] is True and got["fds"] is True and got["sigchld"] is True
    assert got["zmq_context"] is False and got["threads"] == 1

"""Regression: a SIGTERM of the execution service with containers running logged
``Task was destroyed but it is pending!`` (ERROR, twice per container) as it exited.

What broke: each task's exit watch (``TaskManager._monitor``) runs its ``shim.wait`` call in a
task of its own. ``close`` cancelled the watch but not that call, which outlived the shim
client's close: it opened the client's socket again (a reader and a connection monitor task),
and asyncio destroyed those pending at the loop's end. The service must stop quietly, exit 0,
and a new one adopts the containers as before.
"""

from __future__ import annotations

import signal

import pytest

from tests.harness import Instance

pytestmark = pytest.mark.root


def test_sigterm_with_running_containers_stops_quietly(inst: Instance) -> None:
    for name in ("quiet1", "quiet2"):
        inst.cli("run", "-d", "--name", name, "busybox", "sleep", "60", check=True)
    try:
        inst.cli("exec", "quiet1", "true", check=True)
        log = inst.logs / "execution.log"
        before = len(log.read_bytes())
        inst.kill("execution", signal.SIGTERM)
        assert inst.procs["execution"].returncode == 0
        tail = log.read_bytes()[before:].decode(errors="replace")
        assert "service stopped" in tail
        assert "Task was destroyed" not in tail, tail
        assert "ERROR" not in tail, tail
        inst.start("execution")  # adopts them
        r = inst.cli("exec", "quiet2", "echo", "adopted", check=True)
        assert r.stdout.decode().strip() == "adopted"
    finally:
        inst.cli("rm", "-f", "quiet1", "quiet2")

"""The shim template and its spare: a launch goes to the spare shim forked ahead of time, a
dead spare is replaced by an on-demand fork, no spare outlives the template, and a shim is
forked once: the template's child in a session of its own, reaped by the kernel when it exits.

The launches name bundles without a ``shim.json``: each shim then fails at once and reports
why on the launch connection, which is all these tests need to see where a launch went."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import PROJECT


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _state(pid: int) -> str:
    """The process state letter, or "" once it is gone ("Z": exited, not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _stat(pid: int) -> list[str]:
    """``/proc/<pid>/stat`` from the state field on: [state, ppid, pgrp, session, ...]."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _spares(mark: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
        except OSError:
            continue
        pid = int(entry)
        if comm == "dockyard-spare" and f"DYTEST_MARK={mark}".encode() in _environ(pid) and _state(pid) not in "Z":
            out.append(pid)
    return out


def _wait_for(predicate, timeout_s: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out")


class Template:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.mark = uuid.uuid4().hex
        self.socket = str(tmp / "template.sock")
        env = dict(os.environ, DYTEST_MARK=self.mark)
        env.update(DOCKYARD_STATE=str(tmp / "state"), DOCKYARD_ROOT=str(tmp / "root"))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.shim.template", self.socket],
            cwd=PROJECT,
            env=env,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == b"ready\n"

    def launch(self, name: str) -> dict[str, object]:
        bundle = self.tmp / name
        bundle.mkdir()
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(20)
            s.connect(self.socket)
            s.sendall(json.dumps({"namespace": "t", "container_id": name, "bundle": str(bundle)}).encode() + b"\n")
            data = b""
            while chunk := s.recv(4096):  # a serving shim's {"serving": ...} line, then its report
                data += chunk
        return dict(json.loads(data.splitlines()[-1]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pid in _spares(self.mark):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def template(tmp_path: Path) -> Iterator[Template]:
    t = Template(tmp_path)
    try:
        yield t
    finally:
        t.stop()


def _reported_by_a_shim(report: dict[str, object]) -> None:
    assert report["ok"] is False
    assert "shim.json" in str(report["error"]), report  # serve() ran and reported on the connection


def test_a_launch_goes_to_the_spare_and_a_new_spare_follows(template: Template) -> None:
    (spare,) = _wait_for(lambda: _spares(template.mark))
    _reported_by_a_shim(template.launch("b1"))
    _wait_for(lambda: _state(spare) in ("", "Z"))  # the spare became that shim, which exits
    assert "shim.json" in (template.tmp / "b1" / "shim.log").read_text()  # its traceback, in the bundle
    (second,) = _wait_for(lambda: _spares(template.mark))
    assert second != spare
    _reported_by_a_shim(template.launch("b2"))


def test_a_dead_spare_is_replaced_by_a_fork_on_demand(template: Template) -> None:
    (spare,) = _wait_for(lambda: _spares(template.mark))
    os.kill(spare, signal.SIGKILL)
    _wait_for(lambda: _state(spare) in ("", "Z"))
    _reported_by_a_shim(template.launch("b1"))
    _wait_for(lambda: _spares(template.mark))  # and a new spare
    _reported_by_a_shim(template.launch("b2"))


def test_launches_back_to_back_all_answered(template: Template) -> None:
    for i in range(6):  # faster than spares are made: some go to a spare, the rest are forked
        _reported_by_a_shim(template.launch(f"b{i}"))


def test_no_spare_outlives_the_template(template: Template) -> None:
    (spare,) = _wait_for(lambda: _spares(template.mark))
    template.proc.kill()
    template.proc.wait()
    _wait_for(lambda: _state(spare) in ("", "Z"), timeout_s=5)


def test_a_shim_is_the_templates_child_in_its_own_session_and_leaves_no_zombie(template: Template) -> None:
    (spare,) = _wait_for(lambda: _spares(template.mark))
    ppid, _pgrp, session = _stat(spare)[1:4]
    assert int(ppid) == template.proc.pid  # forked once, not double-forked away
    assert int(session) == spare  # setsid: no signal to the template's process group reaches it
    _reported_by_a_shim(template.launch("b1"))
    _wait_for(lambda: _state(spare) == "", timeout_s=5)  # exited and reaped at once (SIGCHLD ignored)

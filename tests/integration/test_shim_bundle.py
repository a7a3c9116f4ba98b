"""The shim on its own, on a bundle whose rootfs is a plain directory (no image or snapshot
service): output and log, exit statuses, start errors, events in order, the state file,
and a SIGKILLed shim leaving a state the execution service can read."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common import endpoints, errors, ids
from common.api.shim import ShimLaunch
from common.rpc.client import Client
from deploy.mkimage import busybox_rootfs_tar
from services.execution import spec
from tests.conftest import need_root
from tests.engine import prepare_runtime
from tests.harness import PROJECT, Instance

pytestmark = pytest.mark.root

_ROOTFS: bytes | None = None


@dataclass
class Bundle:
    inst: Instance
    container_id: str
    path: str
    log_path: str

    def launch(self) -> dict:
        proc = subprocess.run(
            [sys.executable, "-m", "services.shim", "default", self.container_id, self.path],
            env=self.inst.env,
            cwd=PROJECT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def client(self) -> Client:
        return Client("shim", Path(self.path, "address").read_text(), timeout_s=30)

    def state_file(self) -> dict:
        return json.loads(Path(self.path, "state.json").read_text())


def make_bundle(inst: Instance, args: list[str], **launch: object) -> Bundle:
    global _ROOTFS
    if _ROOTFS is None:
        _ROOTFS = busybox_rootfs_tar()
    cid = ids.new_id()
    path = endpoints.bundle_dir("default", cid, inst.env)
    os.makedirs(path + "/rootfs")
    with tarfile.open(fileobj=io.BytesIO(_ROOTFS)) as tar:
        tar.extractall(path + "/rootfs")
    oci = spec.build_spec(container_id=cid, args=args, env=spec.merge_env([], []), cwd="/", hostname=cid[:12])
    Path(path, "config.json").write_text(json.dumps(oci))
    Path(path, "mounts.json").write_text("[]")
    log_path = endpoints.container_dir("default", cid, inst.env) + f"/{cid}-json.log"
    shim = ShimLaunch(
        namespace="default",
        container_id=cid,
        incarnation=1,
        runtime=os.environ.get("DOCKYARD_RUNTIME", "runc"),
        runtime_root=endpoints.runtime_root(os.environ.get("DOCKYARD_RUNTIME", "runc"), inst.env),
        log_path=log_path,
        events_endpoint=endpoints.control_endpoint("events", inst.env),
        **launch,  # type: ignore[arg-type]
    )
    Path(path, "shim.json").write_text(shim.model_dump_json())
    return Bundle(inst, cid, path, log_path)


@pytest.fixture
def events(instance: Instance) -> Iterator[Instance]:
    need_root()
    prepare_runtime(os.environ.get("DOCKYARD_RUNTIME", "runc"))
    instance.start("events")
    yield instance


def journal(inst: Instance, container_id: str) -> list[tuple[str, str]]:
    with inst.client("events") as c:
        return [
            (e["topic"], e["id"])
            for e in c.stream("events.replay", {})
            if e["event"].get("container_id") == container_id
        ]


ONE_EXEC = ["/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-started", "/tasks/exit", "/tasks/delete"]
"""A task's events when one exec ran in it: ``/tasks/exit`` and ``/tasks/delete`` are the exec's."""


def wait_for(predicate, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_output_log_exit_status_and_events_in_order(events: Instance) -> None:
    b = make_bundle(events, ["sh", "-c", "echo out; echo err >&2; printf 'no newline'; exit 3"])
    report = b.launch()
    assert report["ok"] and report["pid"] > 0
    with b.client() as c, b.client() as a:
        att = a.start("shim.attach", {}, timeout_s=None)
        assert att.next_frame()[1]["attached"] is True
        c.call("shim.start", {})
        frames = list(att)
        assert b"".join(f["d"] for f in frames if f["s"] == 1) == b"out\nno newline"
        assert b"".join(f["d"] for f in frames if f["s"] == 2) == b"err\n"
        assert c.call("shim.wait", {}, timeout_s=None)["exit_status"] == 3
        with pytest.raises(errors.FailedPrecondition, match="cannot start task in stopped state"):
            c.call("shim.start", {})
        assert c.call("shim.delete", {})["exit_status"] == 3
        c.start("shim.shutdown", {})  # the shim exits; its reply may not make it
    wait_for(lambda: not os.path.exists(os.path.join(b.path, "address")))
    lines = [json.loads(x) for x in Path(b.log_path).read_text().splitlines()]
    assert [(x["log"], x["stream"]) for x in lines if x["stream"] == "stdout"] == [
        ("out\n", "stdout"),
        ("no newline", "stdout"),
    ]
    wait_for(lambda: len(journal(events, b.container_id)) == 4)
    topics = journal(events, b.container_id)
    assert [t for t, _ in topics] == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    assert [i for _, i in topics] == [f"{b.container_id}/1/{v}" for v in ("create", "start", "exit", "delete")]
    assert b.state_file()["status"] == "deleted"


@pytest.mark.parametrize("start", [False, True], ids=["create", "run-detached"])
@pytest.mark.parametrize(("args", "status"), [(["nosuchcmd"], 127), (["/etc"], 126), (["/nonexistent"], 127)])
def test_start_errors_report_docker_exit_codes(events: Instance, args: list[str], status: int, start: bool) -> None:
    b = make_bundle(events, args, start=start)
    report = b.launch()
    assert report["ok"] is False and report["exit_status"] == status
    assert report["error"]
    state = b.state_file()
    assert state["exit_status"] == status and state["error"] and state["status"] == "deleted"
    runtime = os.environ.get("DOCKYARD_RUNTIME", "runc")
    assert not os.path.exists(os.path.join(endpoints.runtime_root(runtime, events.env), b.container_id))


BIG = ["sh", "-c", "seq 1 60000; echo done >&2; exit 6"]  # 334 kB: more than a pipe holds
BIG_OUT = b"".join(b"%d\n" % i for i in range(1, 60001))


def test_started_at_create_holds_its_output_for_the_attach(events: Instance) -> None:
    """``ShimLaunch.start`` + ``hold_output``: the task runs once the shim reports, and a client
    attaching before ``shim.start`` still gets every byte, although the process had exited."""
    b = make_bundle(events, BIG, start=True, hold_output=True)
    report = b.launch()
    assert report["ok"] and report["pid"] > 0 and report["started_at"]
    with b.client() as c, b.client() as a:
        assert c.call("shim.state", {})["status"] in ("running", "stopped")
        att = a.start("shim.attach", {}, timeout_s=None)
        assert att.next_frame()[1]["attached"] is True
        assert c.call("shim.start", {})["pid"] == report["pid"]  # releases the output, no second start
        frames = list(att)
        assert b"".join(f["d"] for f in frames if f["s"] == 1) == BIG_OUT
        assert b"".join(f["d"] for f in frames if f["s"] == 2) == b"done\n"
        assert c.call("shim.wait", {}, timeout_s=None)["exit_status"] == 6
        with pytest.raises(errors.FailedPrecondition, match="cannot start task in stopped state"):
            c.call("shim.start", {})
        c.call("shim.delete", {})
    wait_for(lambda: len(journal(events, b.container_id)) == 4)
    assert [t for t, _ in journal(events, b.container_id)] == [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
    ]


def _slow_create(b: Bundle, hook: str) -> subprocess.Popen[str]:
    """Launch ``b`` with a ``createRuntime`` hook running ``sh -c hook`` (the runtime's create
    takes that long), in the background: the report comes when the create ended."""
    config = json.loads(Path(b.path, "config.json").read_text())
    config["hooks"] = {"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", hook]}]}
    Path(b.path, "config.json").write_text(json.dumps(config))
    return subprocess.Popen(
        [sys.executable, "-m", "services.shim", "default", b.container_id, b.path],
        env=b.inst.env,
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        text=True,
    )


def _report_of(launcher: subprocess.Popen[str]) -> dict:
    out, _ = launcher.communicate(timeout=60)
    return json.loads(out.strip().splitlines()[-1])


def test_an_attach_sent_while_the_task_is_created_waits_and_releases_the_output(events: Instance) -> None:
    """The execution service attaches, and sends its first ``shim.wait``, as soon as the shim
    serves, before its report: the shim holds both until the task exists; the attach then
    (``release``) starts reading the held output itself, so every byte reaches it and no
    ``shim.start`` is needed, and the wait ends with the exit."""
    b = make_bundle(events, BIG, start=True, hold_output=True)
    launcher = _slow_create(b, "sleep 1")
    try:
        wait_for(lambda: os.path.exists(os.path.join(b.path, "address")))
        with b.client() as a, b.client() as w:
            att = a.start("shim.attach", {"release": True}, timeout_s=None)
            waiting = w.start("shim.wait", {}, timeout_s=None)
            assert launcher.poll() is None  # no report yet: the runtime is still creating the task
            first = att.next_frame()[1]
            assert first["attached"] is True and first["released"] is True
            frames = list(att)
            assert waiting.result()["exit_status"] == 6
        report = _report_of(launcher)
        assert report["ok"] and report["pid"] > 0
        assert b"".join(f["d"] for f in frames if f["s"] == 1) == BIG_OUT
        assert b"".join(f["d"] for f in frames if f["s"] == 2) == b"done\n"
        with b.client() as c:
            assert c.call("shim.wait", {}, timeout_s=None)["exit_status"] == 6
            c.call("shim.delete", {})
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    wait_for(lambda: not os.path.exists(os.path.join(b.path, "address")))


def test_an_attach_sent_while_the_create_fails_ends_with_why(events: Instance) -> None:
    """The create fails after an attach and a wait came: both end with ``task not created``
    and the runtime's reason, the report says the same, nothing is left running."""
    b = make_bundle(events, ["true"], start=True, hold_output=True)
    launcher = _slow_create(b, "sleep 1; echo the hook refused >&2; exit 3")
    try:
        wait_for(lambda: os.path.exists(os.path.join(b.path, "address")))
        with b.client() as a, b.client() as w:
            att = a.start("shim.attach", {"release": True}, timeout_s=None)
            waiting = w.start("shim.wait", {}, timeout_s=None)
            with pytest.raises(errors.FailedPrecondition, match=r"task not created: .*hook"):
                att.next_frame()
            with pytest.raises(errors.FailedPrecondition, match=r"task not created: .*hook"):
                waiting.result()
        report = _report_of(launcher)
        assert report["ok"] is False and "hook" in report["error"]
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    runtime = os.environ.get("DOCKYARD_RUNTIME", "runc")
    assert not os.path.exists(os.path.join(endpoints.runtime_root(runtime, events.env), b.container_id))
    assert b.state_file()["status"] == "deleted"


def test_held_output_is_logged_when_nobody_starts(events: Instance) -> None:
    """Nobody calls ``shim.start`` (the caller went away): the output reaches the log anyway."""
    b = make_bundle(events, BIG, start=True, hold_output=True)
    assert b.launch()["ok"]
    with b.client() as c:
        assert c.call("shim.wait", {}, timeout_s=None)["exit_status"] == 6  # after HOLD_OUTPUT_S
        c.call("shim.delete", {})
    lines = [json.loads(x) for x in Path(b.log_path).read_text().splitlines()]
    assert "".join(x["log"] for x in lines if x["stream"] == "stdout").encode() == BIG_OUT


def test_exec_run_does_the_whole_exec_in_one_call(events: Instance) -> None:
    b = make_bundle(events, ["sleep", "30"], start=True)
    assert b.launch()["ok"]
    process = {"args": ["sh", "-c", "seq 1 60000; read x; echo got $x >&2; exit 4"], "env": ["PATH=/bin"], "cwd": "/"}
    with b.client() as c, b.client() as a:
        run = a.start("shim.exec_run", {"exec_id": "e1", "process": process, "stdin": True}, timeout_s=None)
        assert run.next_frame()[1] == {"registered": True}
        attached = run.next_frame()[1]
        assert attached["attached"] is True and attached["pid"] > 0
        run.send(b"hello\n")
        run.send_eof()
        frames = list(run)
        assert frames[-1] == {"exit_status": 4}
        assert b"".join(f["d"] for f in frames[:-1] if f["s"] == 1) == BIG_OUT
        assert b"".join(f["d"] for f in frames[:-1] if f["s"] == 2) == b"got hello\n"
        with pytest.raises(errors.NotFound):  # deleted by the call
            c.call("shim.state", {"exec_id": "e1"})
        bad = a.start("shim.exec_run", {"exec_id": "e2", "process": {**process, "args": ["nosuch"]}}, timeout_s=None)
        assert bad.next_frame()[1] == {"registered": True}
        with pytest.raises(errors.InvalidArgument) as err:
            bad.next_frame()
        assert err.value.details["exit_status"] == 126  # dockerd: every exec start failure
        with pytest.raises(errors.NotFound):
            c.call("shim.state", {"exec_id": "e2"})
        with pytest.raises(errors.AlreadyExists):  # the same registration rules as shim.exec
            c.call("shim.exec", {"exec_id": "e3", "process": process})
            list(a.start("shim.exec_run", {"exec_id": "e3", "process": process}, timeout_s=None))
        c.call("shim.delete", {"exec_id": "e3"})
        c.call("shim.kill", {"signal": signal.SIGKILL})
        assert c.call("shim.wait", {}, timeout_s=None)["exit_status"] == 137
        c.call("shim.delete", {})
    wait_for(lambda: len(journal(events, b.container_id)) >= 9)
    topics = [t for t, _ in journal(events, b.container_id)]
    assert topics[:6] == ONE_EXEC


def test_signal_exit_is_128_plus_signal(events: Instance) -> None:
    b = make_bundle(events, ["sh", "-c", "trap 'exit 0' USR1; kill -TERM $$; sleep 5"])
    assert b.launch()["ok"]
    with b.client() as c:
        c.call("shim.start", {})
        # sh as PID 1 ignores its own SIGTERM (no handler): ends with sleep's exit
        assert c.call("shim.wait", {}, timeout_s=None)["exit_status"] in (0, 143)
        c.call("shim.delete", {})
    b2 = make_bundle(events, ["sleep", "30"])
    assert b2.launch()["ok"]
    with b2.client() as c:
        c.call("shim.start", {})
        c.call("shim.kill", {"signal": signal.SIGKILL})
        assert c.call("shim.wait", {}, timeout_s=None)["exit_status"] == 137
        c.call("shim.delete", {})


def test_sigkilled_shim_leaves_its_exit_status_in_the_state_file(events: Instance) -> None:
    b = make_bundle(events, ["sh", "-c", "exit 7"])
    assert b.launch()["ok"]
    with b.client() as c:
        c.call("shim.start", {})
        assert c.call("shim.wait", {}, timeout_s=None)["exit_status"] == 7
    shim_pid = int(Path(b.path, "shim.pid").read_text())
    os.kill(shim_pid, signal.SIGKILL)
    state = b.state_file()
    assert state["status"] == "stopped" and state["exit_status"] == 7 and state["shim_pid"] == shim_pid


def test_no_engine_fd_leaks_into_the_container(events: Instance) -> None:
    b = make_bundle(events, ["ls", "/proc/self/fd"])
    assert b.launch()["ok"]
    with b.client() as c, b.client() as a:
        att = a.start("shim.attach", {}, timeout_s=None)
        att.next_frame()
        c.call("shim.start", {})
        out = b"".join(f["d"] for f in att if f["s"] == 1)
        c.call("shim.wait", {}, timeout_s=None)
        c.call("shim.delete", {})
    assert out.split() == [b"0", b"1", b"2", b"3"]  # 3 is ls's own directory fd


def test_exec_runs_in_the_task_and_reports_its_exit(events: Instance) -> None:
    b = make_bundle(events, ["sleep", "30"])
    assert b.launch()["ok"]
    process = {"args": ["sh", "-c", "echo in-exec; id -u; exit 4"], "env": ["PATH=/bin"], "cwd": "/"}
    with b.client() as c, b.client() as a:
        c.call("shim.start", {})
        c.call("shim.exec", {"exec_id": "e1", "process": process, "user": "1000"})
        with pytest.raises(errors.AlreadyExists):
            c.call("shim.exec", {"exec_id": "e1", "process": process})
        att = a.start("shim.attach", {"exec_id": "e1"}, timeout_s=None)
        att.next_frame()
        assert c.call("shim.start", {"exec_id": "e1"})["pid"] > 0
        out = b"".join(f["d"] for f in att if f["s"] == 1)
        assert out == b"in-exec\n1000\n"
        assert c.call("shim.wait", {"exec_id": "e1"}, timeout_s=None)["exit_status"] == 4
        c.call("shim.delete", {"exec_id": "e1"})
        c.call("shim.pause", {})
        assert c.call("shim.state", {})["status"] == "paused"
        with pytest.raises(errors.FailedPrecondition, match="cannot pause task in paused state"):
            c.call("shim.pause", {})
        c.call("shim.resume", {})
        c.call("shim.kill", {"signal": signal.SIGKILL})
        assert c.call("shim.wait", {}, timeout_s=None)["exit_status"] == 137
        c.call("shim.delete", {})
    wait_for(lambda: len(journal(events, b.container_id)) >= 11)
    topics = [t for t, _ in journal(events, b.container_id)]
    assert topics == [
        *ONE_EXEC,
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/kill",  # the signal delivered to init (dockerd's ``kill`` event), before its exit
        "/tasks/exit",
        "/tasks/delete",
    ]

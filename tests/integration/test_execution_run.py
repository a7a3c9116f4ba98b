"""``dockyard run`` end to end on real services, runc and overlayfs: output, exit codes,
Docker's Entrypoint/Cmd/Env rules (C14), events in order, nothing left behind."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy import mkimage
from tests.engine import Engine, busybox_layer, ps_names
from tests.harness import PROJECT
from tests.registry import Registry, skopeo_copy

pytestmark = pytest.mark.root


def test_run_rm_prints_output_and_leaves_nothing(engine: Engine) -> None:
    p = engine.run("--rm", "busybox", "echo", "hi")
    assert (p.returncode, p.stdout, p.stderr) == (0, b"hi\n", b"")
    assert "hi" not in str(engine.containers())
    engine.assert_clean()


def test_exit_status_passes_through(engine: Engine) -> None:
    assert engine.run("--rm", "busybox", "sh", "-c", "exit 3").returncode == 3
    # the shell (PID 1) reports its child killed by SIGKILL as 137, as Docker would show it
    assert engine.run("--rm", "busybox", "sh", "-c", "sh -c 'kill -9 $$'; exit $?").returncode == 137


@pytest.mark.parametrize(("cmd", "code"), [("nosuchcmd", 127), ("/nonexistent", 127), ("/etc", 126)])
def test_commands_that_cannot_start(engine: Engine, cmd: str, code: int) -> None:
    p = engine.run("--rm", "busybox", cmd)
    assert p.returncode == code
    err = p.stderr.lower()
    assert err.startswith(b"error: ") and any(
        w in err for w in (b"not found", b"no such file", b"permission denied", b"not permitted")
    )
    assert not [c for c in engine.containers() if c["path"] == cmd]  # --rm removes it even though it never ran
    p = engine.run("--name", "failed", "busybox", cmd)
    assert p.returncode == code
    state = ps_names(engine)["failed"]["state"]
    assert state["exit_code"] == code and state["error"]
    cid = engine.inspect("failed")["id"]
    assert engine.cli("rm", "failed").returncode == 0
    # no task was ever created, so no /tasks/delete is owed: /containers/delete is journaled
    # by the time rm returns, and holds up no later event of the execution service
    assert engine.topics(cid) == ["/containers/create", "/containers/delete"]
    engine.assert_clean()


def test_a_foreground_run_that_cannot_start_ends_at_once(engine: Engine) -> None:
    """The shim ends the attach that ``run`` sent while its create ran with why; the
    execution service hears it before it closes its client to the shim: the run ends with
    the start's error at once, not after the attach's liveness window (3 s)."""
    for args in (
        ("--rm", "busybox", "/nonexistent"),
        ("--name", "kept", "busybox", "/etc"),
        ("--rm", "-u", "x", "busybox"),
    ):
        for _ in range(3):
            t0 = time.monotonic()
            p = engine.run(*args)
            took = time.monotonic() - t0
            assert p.returncode in (125, 126, 127) and p.stderr.startswith(b"error: ")
            assert took < 2.0, (args, took)
            if "kept" in args:
                assert engine.cli("rm", "kept").returncode == 0
    engine.assert_clean()


def test_stdout_and_stderr_are_kept_apart_byte_for_byte(engine: Engine) -> None:
    script = "printf 'a\\000b\\377c'; printf 'err' >&2; printf 'no newline'"
    p = engine.run("--rm", "busybox", "sh", "-c", script)
    assert p.stdout == b"a\x00b\xffcno newline"
    assert p.stderr == b"err"


def test_events_for_run_rm_in_order(engine: Engine) -> None:
    p = engine.run("--rm", "--name", "evt", "busybox", "true")
    assert p.returncode == 0
    evs = [e for e in engine.events() if e["event"].get("container_name") == "evt" or e["event"].get("name") == "evt"]
    assert [e["topic"] for e in evs] == [
        "/containers/create",
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
        "/containers/delete",
    ]
    exit_ev = next(e for e in evs if e["topic"] == "/tasks/exit")
    assert exit_ev["event"]["exit_status"] == 0


def test_entrypoint_cmd_and_env_rules(engine: Engine) -> None:
    engine.load(
        "ep:latest",
        config={
            "Entrypoint": ["/bin/echo", "E"],
            "Cmd": ["C"],
            "Env": ["PATH=/bin", "A=b=c", "B=", "URL=http://h/?x=1&y=2"],
        },
    )
    assert engine.run("--rm", "ep").stdout == b"E C\n"
    assert engine.run("--rm", "ep", "X").stdout == b"E X\n"
    assert engine.run("--rm", "--entrypoint", "/bin/echo", "ep").stdout == b"\n"
    assert engine.run("--rm", "--entrypoint", "", "ep", "/bin/echo", "Z").stdout == b"Z\n"
    env = engine.run("--rm", "--entrypoint", "/bin/env", "-e", "A=override", "-e", "NEW=x=y", "ep").stdout.decode()
    lines = env.splitlines()
    assert "A=override" in lines and "B=" in lines and "URL=http://h/?x=1&y=2" in lines and "NEW=x=y" in lines


def test_image_without_command_is_refused(engine: Engine) -> None:
    engine.load("nocmd:latest", config={"Cmd": None})
    before = len(engine.containers())
    p = engine.run("--rm", "nocmd")
    assert p.returncode == 125 and b"no command specified" in p.stderr
    assert len(engine.containers()) == before
    engine.load("eponly:latest", config={"Cmd": None, "Entrypoint": ["/bin/echo", "only"]})
    assert engine.run("--rm", "eponly").stdout == b"only\n"


def test_detached_run_logs_stop_rm(engine: Engine) -> None:
    p = engine.run(
        "-d", "--name", "web", "busybox", "sh", "-c", "echo started; trap 'echo bye; exit 0' TERM; sleep 60 & wait"
    )
    assert p.returncode == 0 and len(p.stdout.strip()) == 64
    engine.wait_until(lambda: engine.cli("logs", "web").stdout == b"started\n", what="log line")
    ps = engine.cli("ps").stdout.decode()
    assert "web" in ps and "Up " in ps
    p = engine.cli("rm", "web")
    assert p.returncode != 0 and b"running" in p.stderr
    assert engine.cli("stop", "web").returncode == 0
    info = engine.inspect("web")
    assert info["state"]["status"] == "exited" and info["state"]["exit_code"] == 0
    assert engine.cli("logs", "web").stdout == b"started\nbye\n"
    assert engine.cli("rm", "web").returncode == 0
    engine.assert_clean()


def test_name_conflict_and_lookup_by_prefix(engine: Engine) -> None:
    cid = engine.cli("create", "--name", "one", "busybox", "true", check=True).stdout.decode().strip()
    p = engine.cli("create", "--name", "one", "busybox", "true")
    assert p.returncode == 125 and b"already in use" in p.stderr
    assert engine.inspect(cid[:8])["name"] == "one"
    assert engine.inspect("/one")["id"] == cid
    assert engine.cli("rm", cid[:10]).returncode == 0


def test_missing_image_is_pulled_first(engine: Engine, tmp_path: Path) -> None:
    with Registry(tmp_path / "registry") as reg:
        archive = tmp_path / "busybox.tar"
        mkimage.write_oci_layout([mkimage.build_image("pulled:v1", [busybox_layer()])], str(archive))
        skopeo_copy(f"oci-archive:{archive}", f"docker://{reg.host}/pulled:v1")
        p = engine.run("--rm", f"{reg.host}/pulled:v1", "echo", "pulled")
    assert p.returncode == 0 and p.stdout == b"pulled\n"
    assert f"Unable to find image '{reg.host}/pulled:v1' locally".encode() in p.stderr


def test_a_reader_that_goes_away_ends_the_cli_quietly(engine: Engine) -> None:
    """``dockyard run ... | head -1``: no traceback, the SIGPIPE status, the --rm container still removed."""
    loop = "i=0; while [ $i -lt 20000 ]; do echo line $i; i=$((i+1)); done"
    cli = subprocess.Popen(
        [sys.executable, "-m", "cli", "run", "--rm", "busybox", "sh", "-c", loop],
        env=engine.inst.env,
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert cli.stdout is not None and cli.stderr is not None
    first = cli.stdout.readline()
    cli.stdout.close()  # 20000 lines are more than a pipe holds: the CLI's next write fails
    err = cli.stderr.read()
    assert (first, cli.wait(60), err) == (b"line 0\n", 141, b"")
    engine.wait_until(lambda: not engine.containers(), 30, "the --rm container removed")
    engine.assert_clean()


def test_the_console_script_serves_hot_and_full_commands(engine: Engine) -> None:
    """``.venv/bin/dockyard`` skips ``site`` (-S); the typer commands still find their packages."""
    script = PROJECT / ".venv" / "bin" / "dockyard"
    if not script.exists():
        pytest.skip("no .venv/bin/dockyard (deploy/setup.sh makes it)")
    env = engine.inst.env
    hot = subprocess.run([str(script), "run", "--rm", "busybox", "echo", "hi"], env=env, capture_output=True)
    assert (hot.returncode, hot.stdout, hot.stderr) == (0, b"hi\n", b"")
    full = subprocess.run([str(script), "images"], env=env, capture_output=True)
    assert full.returncode == 0 and b"busybox" in full.stdout, full.stderr


def test_unknown_runtime_is_refused_up_front(engine: Engine) -> None:
    p = engine.run("--rm", "--runtime", "nosuchruntime", "busybox", "true")
    assert (p.returncode, p.stderr) == (125, b"error: unknown or invalid runtime name: nosuchruntime\n")
    assert not engine.containers()


def test_inspect_finds_containers_and_images(engine: Engine) -> None:
    """``docker inspect``: a name no container has is looked up as an image; a name nothing
    has is an error (exit 1) after what was found is printed."""
    engine.run("-d", "--name", "insp", "busybox", "sleep", "60", check=True)
    p = engine.cli("inspect", "insp", "busybox")
    assert p.returncode == 0, p.stderr
    docs = json.loads(p.stdout)
    assert docs[0]["Name"] == "/insp" and docs[0]["State"]["Running"] is True
    assert docs[1]["Id"].startswith("sha256:") and "busybox:latest" in docs[1]["RepoTags"]
    p = engine.cli("inspect", "insp", "nosuchthing")
    assert p.returncode == 1 and b"no such object: nosuchthing" in p.stderr
    assert [d["Name"] for d in json.loads(p.stdout)] == ["/insp"]
    engine.cli("rm", "-f", "insp", check=True)

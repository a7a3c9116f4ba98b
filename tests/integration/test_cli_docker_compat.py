"""Where ``dockyard`` and the gateway must answer as Docker does, found by users.

One instance started with ``dockyard up`` (every service, the gateway's socket, a real
busybox) serves the module; the same cases go through ``dockyard``, the Docker API and,
when installed, the real docker CLI.

- exec start errors follow run's rules (missing command 127; not executable, bad working
  directory, permission 126): ``exec -w /nonexistent`` was 127;
- ``run -w`` to a path that is a file is 126 with an error.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import need_root
from tests.gateway_util import Engine, engine


@pytest.fixture(scope="module")
def eng() -> Iterator[Engine]:
    need_root()
    with engine() as e:
        yield e


def dy(eng: Engine, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return eng.inst.cli(*args, input=input, timeout=60)


@pytest.fixture(scope="module")
def sleeper(eng: Engine) -> str:
    r = dy(eng, "run", "-d", "--name", "sleeper", "busybox", "sleep", "1000")
    assert r.returncode == 0, r.stderr
    return "sleeper"


EXEC_CASES = [
    # (exec options, command, exit status, what stderr names)
    (["-w", "/nonexistent"], ["true"], 126, b'chdir to cwd ("/nonexistent") set in config.json failed'),
    (["-w", "/etc/passwd"], ["true"], 126, b'chdir to cwd ("/etc/passwd")'),
    ([], ["nosuchcmd"], 127, b"executable file not found"),
    ([], ["/nonexistent"], 127, b"no such file or directory"),
    ([], ["/etc"], 126, b"permission denied"),
]


@pytest.mark.parametrize(("opts", "cmd", "status", "says"), EXEC_CASES)
def test_exec_start_error_status_follows_run(
    eng: Engine, sleeper: str, opts: list[str], cmd: list[str], status: int, says: bytes
) -> None:
    """``dockyard exec`` (one shim.exec_run stream) exits as ``docker exec`` does."""
    r = dy(eng, "exec", *opts, sleeper, *cmd)
    assert r.returncode == status, r.stderr
    assert b"OCI runtime exec failed" in r.stderr and says in r.stderr, r.stderr


@pytest.mark.parametrize(("opts", "cmd", "status", "says"), EXEC_CASES)
def test_api_exec_start_error_exit_code(
    eng: Engine, sleeper: str, opts: list[str], cmd: list[str], status: int, says: bytes
) -> None:
    """Docker API: exec create + start (attached) shows the error; exec inspect has the ExitCode."""
    config: dict[str, object] = {"Cmd": cmd, "AttachStdout": True, "AttachStderr": True}
    if opts:
        config["WorkingDir"] = opts[1]
    exec_id = eng.json("POST", f"/containers/{sleeper}/exec", config)["Id"]
    code, _headers, body = eng.api("POST", f"/exec/{exec_id}/start", {"Detach": False, "Tty": False})
    assert code == 200 and says in body, (code, body)
    inspect = eng.json("GET", f"/exec/{exec_id}/json")
    assert (inspect["Running"], inspect["ExitCode"]) == (False, status), json.dumps(inspect)


def test_docker_exec_bad_workdir_is_126(eng: Engine, sleeper: str) -> None:
    """The real docker CLI through the gateway: what ``docker exec -w /nonexistent`` gives Docker."""
    r = eng.docker("exec", "-w", "/nonexistent", sleeper, "true")
    assert r.returncode == 126, r.stderr
    assert b"OCI runtime exec failed" in r.stdout + r.stderr
    assert eng.docker("exec", sleeper, "nosuchcmd").returncode == 127


def test_run_workdir_that_is_a_file_is_126(eng: Engine) -> None:
    r = dy(eng, "run", "--name", "wdfile", "-w", "/etc/passwd", "busybox", "true")
    assert r.returncode == 126, r.stderr
    assert b"/etc/passwd is not a directory" in r.stderr
    state = eng.json("GET", "/containers/wdfile/json")["State"]
    assert (state["Status"], state["ExitCode"]) == ("created", 126), state  # Docker's, as for a missing command
    assert "/etc/passwd is not a directory" in state["Error"]
    r = dy(eng, "run", "--rm", "-w", "/etc/passwd/sub", "busybox", "true")
    assert r.returncode == 126, r.stderr
    assert dy(eng, "rm", "wdfile").returncode == 0

"""Where ``dockyard`` and the gateway must answer as Docker does, found by users.

One instance started with ``dockyard up`` (every service, the gateway's socket, a real
busybox) serves the module; the same cases go through ``dockyard``, the Docker API and,
when installed, the real docker CLI.

- an exec that cannot start exits 126 whatever the cause (a missing command too: dockerd's
  ``ContainerExecStart`` records 126 for every start failure; ``run`` says 127 there):
  ``exec -w /nonexistent`` was 127;
- ``run -w`` to a path that is a file is 126 with an error;
- ``-it`` with stdin not a terminal is refused (``the input device is not a TTY``, exit 1,
  nothing created), by the hot parser's path and by typer's (``container run``);
- ``start -a`` of a container whose command does not exist prints the error and exits 1,
  as ``docker start -a`` does (it was 127, ``run``'s code).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.gateway_util import Engine


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
    ([], ["nosuchcmd"], 126, b"executable file not found"),
    ([], ["/nonexistent"], 126, b"no such file or directory"),
    ([], ["/etc"], 126, b"permission denied"),
]


@pytest.mark.parametrize(("opts", "cmd", "status", "says"), EXEC_CASES)
def test_exec_start_error_status_is_dockers(
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
    assert eng.docker("exec", sleeper, "nosuchcmd").returncode == 126


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


def _names(eng: Engine) -> set[str]:
    return {c["Names"][0] for c in eng.json("GET", "/containers/json?all=1")}


@pytest.mark.parametrize(
    "args",
    [
        ["run", "-it", "--rm", "busybox", "cat"],
        ["run", "-ti", "--name", "tty1", "busybox", "cat"],
        ["container", "run", "-it", "--rm", "busybox", "cat"],  # the typer path
        ["exec", "-it", "sleeper", "cat"],
        ["container", "exec", "--interactive", "--tty", "sleeper", "cat"],
    ],
)
def test_it_with_stdin_not_a_tty_is_refused(eng: Engine, sleeper: str, args: list[str]) -> None:
    before = _names(eng)
    r = dy(eng, *args, input=b"hi\n")  # stdin is a pipe
    assert (r.returncode, r.stdout) == (1, b""), r.stderr
    assert r.stderr.strip().endswith(b"the input device is not a TTY"), r.stderr
    assert _names(eng) == before  # nothing created


def test_t_without_i_or_detached_it_is_allowed_without_a_tty(eng: Engine, sleeper: str) -> None:
    r = dy(eng, "run", "-t", "--rm", "busybox", "echo", "ok", input=b"hi\n")
    assert (r.returncode, r.stdout) == (0, b"ok\r\n"), r.stderr  # the container's tty ends lines with CRLF
    r = dy(eng, "exec", "-t", sleeper, "echo", "ok", input=b"hi\n")
    assert (r.returncode, r.stdout) == (0, b"ok\r\n"), r.stderr
    r = dy(eng, "run", "-i", "--rm", "busybox", "cat", input=b"hi\n")
    assert (r.returncode, r.stdout) == (0, b"hi\n"), r.stderr
    r = dy(eng, "run", "-dit", "--name", "dit", "busybox", "cat", input=b"hi\n")
    assert r.returncode == 0, r.stderr
    assert dy(eng, "rm", "-f", "dit").returncode == 0


def test_exec_it_into_a_missing_container_says_so_first(eng: Engine) -> None:
    """As the docker CLI: the container lookup comes before the TTY check."""
    r = dy(eng, "exec", "-it", "nosuchcontainer", "cat", input=b"")
    assert r.returncode == 1 and b"not found" in r.stderr and b"TTY" not in r.stderr, r.stderr


@pytest.mark.parametrize("verb", [["start"], ["container", "start"]])
def test_start_a_of_a_missing_command_exits_1_with_the_error(eng: Engine, verb: list[str]) -> None:
    name = "nocmd-" + "-".join(verb)
    assert dy(eng, "create", "--name", name, "busybox", "nosuchcmd").returncode == 0
    r = dy(eng, *verb, "-a", name)
    assert r.returncode == 1, r.stderr
    assert b"executable file not found" in r.stderr and b"nosuchcmd" in r.stderr, r.stderr
    state = eng.json("GET", f"/containers/{name}/json")["State"]
    assert state["ExitCode"] == 127  # what the engine records stays Docker's
    assert dy(eng, "start", name).returncode == 1  # without -a: the error, exit 1, as before
    assert dy(eng, "rm", name).returncode == 0


def test_docker_start_a_of_a_missing_command_exits_1(eng: Engine) -> None:
    """The real docker CLI through the gateway: the behaviour ``dockyard start -a`` follows."""
    eng.ok("create", "--name", "nocmd-docker", "busybox", "nosuchcmd")
    r = eng.docker("start", "-a", "nocmd-docker")
    assert r.returncode == 1 and b"executable file not found" in r.stderr, r.stderr
    eng.ok("rm", "nocmd-docker")

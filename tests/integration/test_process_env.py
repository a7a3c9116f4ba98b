"""The environment of a container's process and of its execs, as Docker gives it (moby
``CreateDaemonEnvironment``): PATH, ``HOSTNAME=<the container's hostname>``, ``TERM=xterm``
with a terminal only, the user's ``-e`` and the image's Env winning over them; inspect's
Config.Env holds only the user's and the image's entries."""

from __future__ import annotations

import subprocess
import sys

from tests.harness import PROJECT, Instance


def _env(out: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.decode().replace("\r\n", "\n").splitlines() if "=" in line)


def test_hostname_and_term_in_run_and_exec(dy: Instance) -> None:
    p = dy.cli("run", "--rm", "busybox", "sh", "-c", "env; echo hostname=$(hostname)")
    assert p.returncode == 0, p.stderr
    env = _env(p.stdout)
    assert env["HOSTNAME"] == env["hostname"] and len(env["HOSTNAME"]) == 12
    assert "TERM" not in env and env["PATH"] and env["HOME"] == "/root"
    # what the shim gives the runtime (GOMAXPROCS=1) and what runc gives its init stay theirs
    assert not [k for k in env if k.startswith(("GOMAXPROCS", "_LIBCONTAINER"))], env

    p = dy.cli("run", "--rm", "-t", "busybox", "env")
    assert _env(p.stdout)["TERM"] == "xterm"
    p = dy.cli("run", "--rm", "-t", "-e", "TERM=vt100", "--hostname", "box", "busybox", "env")
    env = _env(p.stdout)
    assert (env["TERM"], env["HOSTNAME"]) == ("vt100", "box")
    p = dy.cli("run", "--rm", "-e", "HOSTNAME=mine", "busybox", "sh", "-c", "echo $HOSTNAME")
    assert p.stdout == b"mine\n"

    cid = dy.cli("run", "-d", "--name", "envd", "-e", "A=1", "busybox", "sleep", "300").stdout.decode().strip()
    env = _env(dy.cli("exec", "-t", "envd", "env").stdout)
    assert (env["TERM"], env["HOSTNAME"], env["A"]) == ("xterm", cid[:12], "1")
    env = _env(dy.cli("exec", "-e", "B=2", "envd", "env").stdout)
    assert "TERM" not in env and (env["HOSTNAME"], env["A"], env["B"]) == (cid[:12], "1", "2")
    with dy.client("execution") as c:
        info = c.call("execution.inspect", {"id": "envd"})
    assert info["env"] == ["A=1", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    dy.cli("rm", "-f", "envd", check=True)

    # a terminal container's non-terminal exec has no TERM (Docker builds it by the exec's own terminal)
    dy.cli("run", "-d", "-t", "--name", "envt", "busybox", "sleep", "300", check=True)
    assert "TERM" not in _env(dy.cli("exec", "envt", "env").stdout)
    assert _env(dy.cli("exec", "-t", "envt", "env").stdout)["TERM"] == "xterm"
    dy.cli("rm", "-f", "envt", check=True)


def test_bytes_that_are_not_utf8_become_u_fffd_as_on_docker(dy: Instance) -> None:
    """An argument, a ``-e NAME=VALUE`` and a variable that ``-e NAME`` takes from the client's
    environment, each with bytes that are not UTF-8: the container gets U+FFFD for each byte
    (Docker's JSON wire does the same), and the CLI prints no traceback."""
    env = {k.encode(): v.encode() for k, v in dy.env.items()}
    env[b"DY_RAW"] = b"a\xffb"
    script = b'printf "%s|%s|%s" "$DY_RAW" "$DY_ARG" "$0"'
    cmd = [sys.executable.encode(), b"-m", b"cli", b"run", b"--rm", b"-e", b"DY_RAW", b"-e", b"DY_ARG=c\xfe\xfdd"]
    p = subprocess.run([*cmd, b"busybox", b"sh", b"-c", script, b"e\xff"], env=env, cwd=PROJECT, capture_output=True,
                       timeout=120)  # fmt: skip
    assert (p.returncode, p.stderr) == (0, b"")
    assert p.stdout.decode() == "a\ufffdb|c\ufffd\ufffdd|e\ufffd"

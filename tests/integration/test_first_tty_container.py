"""Regression: the first TTY container of a fresh state directory failed to start with
``Internal: console: [Errno 2] No such file or directory``: the shim binds the runtime's
console socket next to its RPC endpoint, in a directory the RPC server made only as it
bound, after the runtime's create had started."""

from __future__ import annotations

from tests.harness import Instance


def test_first_tty_container_of_a_fresh_state_dir_starts(dy: Instance) -> None:
    p = dy.cli("run", "--rm", "-t", "busybox", "echo", "tty-ok")
    assert (p.returncode, p.stdout, p.stderr) == (0, b"tty-ok\r\n", b"")

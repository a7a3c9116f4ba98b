"""``dockyard logs -f`` rides through a SIGKILL of the execution service.

What broke: ``dockyard logs -f C`` with the execution service killed mid-follow printed
``error: Unavailable: execution service not answering`` and exited 1, although the container
ran on and went on writing. Now it waits for the service to come back and goes on right
after the last entry it printed (``cli.resume.follow_logs``, the log cursor of
``services.execution.logs``): no line lost, none twice, and it ends when the container ends.
"""

from __future__ import annotations

import time

from tests.harness import Instance
from tests.integration.test_run_output_across_execution_restart import _finish, _read_until

SCRIPT = "echo one; echo err-one >&2; sleep 2; echo two; echo err-two >&2; exit 3"


def _wait_logged(dy: Instance, name: str, want: bytes, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if want in dy.cli("logs", name).stdout:
            return
        time.sleep(0.1)
    raise AssertionError(f"{want!r} never logged by {name}")


def test_logs_follow_goes_on_after_execution_is_killed(dy: Instance) -> None:
    dy.cli("run", "-d", "--name", "chatty", "busybox", "sh", "-c", SCRIPT, check=True)
    proc = dy.cli_popen("logs", "-f", "chatty")
    head = _read_until(proc, b"one\n")
    dy.kill("execution")
    dy.start("execution")
    out, err, code = _finish(proc, head)
    assert (out, err, code) == (b"one\ntwo\n", b"err-one\nerr-two\n", 0)


def test_logs_follow_of_a_fast_writer_loses_and_repeats_no_line(dy: Instance) -> None:
    """Killed while the log streams: thousands of entries share a time (one per read of the
    shim), so only the cursor's count of entries at that time resumes exactly."""
    n = 200_000
    dy.cli("run", "-d", "--name", "fast", "busybox", "sh", "-c", f"seq 1 {n}; sleep 1; echo end", check=True)
    proc = dy.cli_popen("logs", "-f", "-t", "fast")
    head = _read_until(proc, b" 1000\n")
    dy.kill("execution")
    dy.start("execution")
    out, err, code = _finish(proc, head)
    assert code == 0, err
    lines = out.decode().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [str(i) for i in range(1, n + 1)] + ["end"]
    assert all(line[:4].isdigit() and line.split(" ", 1)[0].endswith("Z") for line in lines)
    assert out == dy.cli("logs", "-t", "fast").stdout  # the very entries, with their times


def test_logs_tail_follow_keeps_the_tail_and_shows_what_came_during_the_outage(dy: Instance) -> None:
    script = "seq 1 5; sleep 2; echo six; sleep 1; echo seven"
    dy.cli("run", "-d", "--name", "tailed", "busybox", "sh", "-c", script, check=True)
    _wait_logged(dy, "tailed", b"5\n")
    proc = dy.cli_popen("logs", "-f", "--tail", "2", "tailed")
    head = _read_until(proc, b"4\n5\n")
    dy.kill("execution")
    time.sleep(2.5)  # "six" is logged while nobody serves
    dy.start("execution")
    out, err, code = _finish(proc, head)
    assert (out, code) == (b"4\n5\nsix\nseven\n", 0), err


def test_logs_follow_with_tail_0_that_had_printed_nothing(dy: Instance) -> None:
    """Nothing printed before the kill: the tail is taken as of the request, and all that was
    logged since (during the outage too) follows."""
    script = "echo before; sleep 3; echo during; sleep 2; echo after"
    dy.cli("run", "-d", "--name", "quiet", "busybox", "sh", "-c", script, check=True)
    _wait_logged(dy, "quiet", b"before\n")
    proc = dy.cli_popen("logs", "-f", "--tail", "0", "quiet")
    time.sleep(1.5)  # the CLI is up and its call in (it prints nothing to wait for)
    dy.kill("execution")
    time.sleep(2.5)  # "during" is logged while nobody serves
    dy.start("execution")
    out, err, code = _finish(proc, b"")
    assert (out, code) == (b"during\nafter\n", 0), err


def test_logs_follow_gives_up_when_execution_stays_away(dy: Instance) -> None:
    dy.env["DOCKYARD_RESUME_WAIT_S"] = "2"
    dy.cli("run", "-d", "--name", "alone", "busybox", "sh", "-c", SCRIPT, check=True)
    proc = dy.cli_popen("logs", "-f", "alone")
    head = _read_until(proc, b"one\n")
    dy.kill("execution")
    out, err, code = _finish(proc, head)
    assert (out, code) == (b"one\n", 1)
    assert err.decode().splitlines()[-1].startswith("error: Unavailable: execution service not answering at ")


def test_logs_follow_warns_when_the_log_rotated_past_it_during_the_outage(dy: Instance) -> None:
    """The last entry printed was rotated out while the service was away (max-size 1k, two
    files): a one-line warning, then the oldest output left, in order, to the end."""
    script = "echo first; sleep 3; seq 1 2000; sleep 1; echo last"
    opts = ("--log-opt", "max-size=1k", "--log-opt", "max-file=2")
    dy.cli("run", "-d", *opts, "--name", "rotated", "busybox", "sh", "-c", script, check=True)
    proc = dy.cli_popen("logs", "-f", "rotated")
    head = _read_until(proc, b"first\n")
    dy.kill("execution")
    time.sleep(3)  # seq writes some 9 KB: "first" is rotated out meanwhile
    dy.start("execution")
    out, err, code = _finish(proc, head)
    assert code == 0, err
    assert "some output is missing" in err.decode()
    lines = out.decode().splitlines()
    assert lines[0] == "first" and lines[-1] == "last"
    rest = [int(x) for x in lines[1:-1]]
    assert rest and rest == list(range(rest[0], 2001)) and rest[0] > 1

"""Regression: ``dockyard events --until $(date +%s)`` waited forever and ``--since <unix time>``
replayed nothing: an all-digits value was read as a journal sequence number.

``--since``/``--until`` take unix seconds as ``docker events`` does (and RFC 3339, durations);
sequence numbers go to ``--since-seq``/``--until-seq``. Each command runs with a timeout, so
one that does not return fails the test instead of hanging it.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest

from tests.conftest import running_instance
from tests.harness import Instance

LIFECYCLE = [
    "/containers/create",
    "/tasks/create",
    "/tasks/start",
    "/tasks/exit",
    "/tasks/delete",
    "/containers/delete",
]


class Runs(NamedTuple):
    """Three ``run --rm`` one after the other, and the times and journal heads between them."""

    dy: Instance
    before: float  # unix seconds: after "earlier" ended, before "between" began
    after: float  # after "between" ended, before "later" began
    head_before: int
    head_after: int


def _head(dy: Instance) -> int:
    with dy.client("events") as c:
        return int(c.call("events.head", {})["seq"])


@pytest.fixture(scope="module")
def runs() -> Iterator[Runs]:
    with running_instance() as dy:
        dy.cli("run", "--rm", "--name", "earlier", "busybox", "true", check=True)
        head_before, before = _head(dy), time.time()
        dy.cli("run", "--rm", "--name", "between", "busybox", "true", check=True)
        after, head_after = time.time(), _head(dy)
        time.sleep(0.01)  # "later" happens after `after`, whatever the clock's resolution
        dy.cli("run", "--rm", "--name", "later", "busybox", "true", check=True)
        yield Runs(dy, before, after, head_before, head_after)


def _events(dy: Instance, *args: str) -> list[dict[str, Any]]:
    """``dockyard events --json <args>``; it must return by itself (within 30 s) and exit 0."""
    r = dy.cli("events", "--json", *args, timeout=30)
    assert r.returncode == 0, r.stderr.decode()
    return [json.loads(line) for line in r.stdout.decode().splitlines()]


def _lifecycles(envs: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The topics each container's lifecycle events came in, by container name."""
    out: dict[str, list[str]] = {}
    for env in envs:
        name = env["event"].get("container_name") or env["event"].get("name")
        if env["topic"] in LIFECYCLE and name:
            out.setdefault(name, []).append(env["topic"])
    return out


def test_since_and_until_in_whole_unix_seconds_replay_the_run_and_return(runs: Runs) -> None:
    """As a Docker user types it: ``--since <date +%s before> --until $(( $(date +%s) + 1 ))``
    (whole seconds: a second before, up to one after; the future end is waited for, then it returns)."""
    since, until = str(int(runs.before)), str(int(runs.after) + 1)
    started = time.monotonic()
    got = _lifecycles(_events(runs.dy, "--since", since, "--until", until))
    assert got["between"] == LIFECYCLE, got
    assert time.monotonic() - started < 10


def test_since_and_until_in_decimal_unix_seconds_replay_only_what_happened_between(runs: Runs) -> None:
    got = _lifecycles(_events(runs.dy, "--since", f"{runs.before:.6f}", "--until", f"{runs.after:.6f}"))
    assert got == {"between": LIFECYCLE}


def test_until_now_in_unix_seconds_returns(runs: Runs) -> None:
    """``dockyard events --until $(date +%s)``: live from now until now, so nothing, at once."""
    started = time.monotonic()
    assert _events(runs.dy, "--until", str(int(time.time()))) == []
    assert time.monotonic() - started < 10


def test_since_and_until_as_rfc3339_and_duration(runs: Runs) -> None:
    since = dt.datetime.fromtimestamp(runs.before, dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    got = _lifecycles(_events(runs.dy, "--since", since, "--until", "0s"))
    assert got == {"between": LIFECYCLE, "later": LIFECYCLE}
    assert _lifecycles(_events(runs.dy, "--since", "10m", "--until", "0s")).keys() == {"earlier", "between", "later"}


def test_since_seq_and_until_seq_replay_by_sequence_number(runs: Runs) -> None:
    envs = _events(runs.dy, "--since-seq", str(runs.head_before), "--until-seq", str(runs.head_after))
    assert _lifecycles(envs) == {"between": LIFECYCLE}
    seqs = [env["seq"] for env in envs]
    assert seqs == list(range(runs.head_before + 1, runs.head_after + 1))  # seq > since, <= until
    plain = runs.dy.cli("events", "--since-seq", "0", "--until-seq", str(runs.head_before), timeout=30, check=True)
    seqs = [int(line.split()[1]) for line in plain.stdout.decode().splitlines()]  # <time> <seq> ...
    assert seqs == sorted(set(seqs)) and seqs[0] > 0 and seqs[-1] == runs.head_before
    assert any(" /containers/delete " in line and "name=earlier" in line for line in plain.stdout.decode().splitlines())
    assert _events(runs.dy, "--since-seq", str(runs.head_after), "--until-seq", str(runs.head_after)) == []


def test_a_time_and_a_seq_for_one_bound_is_refused(runs: Runs) -> None:
    r = runs.dy.cli("events", "--since", "0", "--since-seq", "0", "--until-seq", "1", timeout=30)
    assert (r.returncode, r.stdout) == (1, b"")
    assert r.stderr == b"error: --since and --since-seq cannot be used together: give a time or a seq\n"
    r = runs.dy.cli("events", "--until", "tomorrow", timeout=30)
    assert r.returncode == 1 and r.stderr.startswith(b"error: invalid value 'tomorrow' for --until: use unix seconds")
    assert r.stderr.count(b"\n") == 1

"""Regression: ``run --cpus -1`` ended in ``execution.run: invalid request: resources.nano_cpus:
Input should be greater than or equal to 0`` (pydantic's words, not docker's).

``common.resources`` checks resources with dockerd's messages before a request leaves the
CLI or the gateway; the CLI parses ``--memory``/``--memory-swap``/``--cpus`` as docker's
flag parser does.
"""

from __future__ import annotations

import pytest

from cli import runner
from common import resources


@pytest.mark.parametrize(
    ("res", "message"),
    [
        ({"nano_cpus": -1_000_000_000}, "Range of CPUs is from 0.01 to 4.00, as there are only 4 CPUs available"),
        ({"nano_cpus": 5_000_000_000}, "Range of CPUs is from 0.01 to 4.00, as there are only 4 CPUs available"),
        ({"memory": 1024}, "Minimum memory limit allowed is 6MB"),
        ({"memory": -5}, "Minimum memory limit allowed is 6MB"),
        (
            {"memory": 64 << 20, "memory_swap": 32 << 20},
            "Minimum memoryswap limit should be larger than memory limit, see usage",
        ),
        ({"memory_swap": 64 << 20}, "You should always set the Memory limit when using Memoryswap limit, see usage"),
        ({"memory_swap": -2}, "Invalid value: -2, memory swap must be -1 (unlimited) or positive"),
        (
            {"nano_cpus": 10**9, "cpu_period": 100000},
            "Conflicting options: Nano CPUs and CPU Period cannot both be set",
        ),
        ({"nano_cpus": 10**9, "cpu_quota": 50000}, "Conflicting options: Nano CPUs and CPU Quota cannot both be set"),
        ({"cpu_period": 10}, "CPU cfs period can not be less than 1ms (i.e. 1000) or larger than 1s (i.e. 1000000)"),
        ({"cpu_quota": 10}, "CPU cfs quota can not be less than 1ms (i.e. 1000)"),
    ],
)
def test_refused_with_dockerds_message(res: dict[str, int], message: str) -> None:
    with pytest.raises(resources.ResourceError) as exc:
        resources.validate(res, ncpu=4)
    assert str(exc.value) == message


def test_accepted_and_clamped() -> None:
    res = {"memory": 6 << 20, "memory_swap": -1, "nano_cpus": 4_000_000_000, "cpu_shares": -3, "pids_limit": -1}
    resources.validate(res, ncpu=4)
    assert res["cpu_shares"] == 2 and res["pids_limit"] == -1
    big = {"cpu_shares": 10**7}
    resources.validate(big, ncpu=4)
    assert big["cpu_shares"] == 262144
    resources.validate({"memory_swap": 64 << 20}, update=True, ncpu=4)  # update may change swap alone


def test_nano_cpus() -> None:
    assert resources.nano_cpus(1.5) == 1_500_000_000
    assert resources.nano_cpus("0.01") == 10_000_000
    with pytest.raises(resources.ResourceError, match="value is too precise"):
        resources.nano_cpus(0.0000000001)


def _cli_fails(capsys: pytest.CaptureFixture[str], fn: object, *args: object, **kw: object) -> str:
    with pytest.raises(SystemExit) as exc:
        fn(*args, **kw)  # type: ignore[operator]
    assert exc.value.code == 125
    return capsys.readouterr().err


def test_cli_flags(capsys: pytest.CaptureFixture[str]) -> None:
    n = resources.cpu_count()
    err = _cli_fails(capsys, runner.create_request, "busybox", None, cpus=-1.0)
    assert err == f"error: Range of CPUs is from 0.01 to {n}.00, as there are only {n} CPUs available\n"
    err = _cli_fails(capsys, runner.create_request, "busybox", None, memory="-1")
    assert err == 'error: invalid argument "-1" for "-m, --memory" flag: invalid size: \'-1\'\n'
    err = _cli_fails(capsys, runner.create_request, "busybox", None, memory="1k")
    assert err == "error: Minimum memory limit allowed is 6MB\n"
    err = _cli_fails(capsys, runner.create_request, "busybox", None, memory_swap="12x")
    assert err == 'error: invalid argument "12x" for "--memory-swap" flag: invalid size: \'12x\'\n'
    err = _cli_fails(capsys, runner.create_request, "busybox", None, cpus=1e-10)
    assert err == 'error: invalid argument "1e-10" for "--cpus" flag: value is too precise\n'
    req = runner.create_request("busybox", None, memory="32MiB", memory_swap="-1", cpus=0.5, cpu_shares=1)
    assert req["resources"] == {"memory": 32 << 20, "memory_swap": -1, "nano_cpus": 500_000_000, "cpu_shares": 2}
    assert runner.parse_bytes("1.5g", "memory") == 3 << 29
    assert runner.parse_bytes("100", "memory") == 100
    assert runner.parse_bytes("64mb", "memory") == 64 << 20

"""The limits a container's resources must respect, checked where a request enters Dockyard.

The CLI (``run``/``create``/``update``) and the gateway (``POST /containers/create``,
``/containers/{id}/update``) both call :func:`validate` on the ``Resources`` fields
(``common.api.execution.Resources``) before anything reaches the execution service, so a
bad value reads as dockerd's message (moby ``daemon/daemon_unix.go``,
``verifyPlatformContainerResources`` and ``adaptContainerSettings``) instead of a pydantic
error about ``resources.nano_cpus``. Pure: no I/O but the CPU count; imports only ``os``
(the CLI's hot path uses it).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing costs the CLI's hot path an import; type checkers read this as typing's
if TYPE_CHECKING:
    from typing import Any

MIN_MEMORY = 6 * 1024 * 1024
"""dockerd's ``linuxMinMemory``: the smallest memory limit in bytes (6 MiB)."""
MIN_CPU_SHARES, MAX_CPU_SHARES = 2, 262144
"""The kernel's range of ``cpu.shares``; dockerd clamps a value outside it into it."""
MIN_CPU_PERIOD_US, MAX_CPU_PERIOD_US, MIN_CPU_QUOTA_US = 1000, 1_000_000, 1000
"""CFS period and quota bounds in microseconds (dockerd's checks)."""


class ResourceError(ValueError):
    """A resource value dockerd would refuse; the message is dockerd's."""


def cpu_count() -> int:
    """CPUs this process may run on (Go's ``runtime.NumCPU``, which dockerd reports)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def nano_cpus(cpus: float | str) -> int:
    """``--cpus`` (a decimal number of CPUs) in units of 1e-9 CPUs, as docker/cli ``opts.ParseCPUs``.

    Raises ResourceError ``value is too precise`` below a nano-CPU and ``failed to parse ...``
    for what is not a number. The range is checked by :func:`validate`.
    """
    from decimal import Decimal, InvalidOperation

    try:
        value = Decimal(str(cpus)) * 1_000_000_000
    except InvalidOperation:
        raise ResourceError(f"failed to parse {cpus} as a rational number") from None
    if not value.is_finite():
        raise ResourceError(f"failed to parse {cpus} as a rational number")
    if value != value.to_integral_value():
        raise ResourceError("value is too precise")
    return int(value)


def validate(resources: dict[str, Any], *, update: bool = False, ncpu: int | None = None) -> None:
    """Check ``resources`` (``Resources`` field names; missing = not set) as dockerd does.

    Raises ResourceError with dockerd's message:

    - ``memory`` not 0 and below 6 MiB: ``Minimum memory limit allowed is 6MB``;
    - ``memory_swap`` below -1: ``Invalid value: ..., memory swap must be -1 (unlimited) or positive``;
      positive and below ``memory``: ``Minimum memoryswap limit should be larger than memory
      limit, see usage``; positive without ``memory`` (on create): ``You should always set the
      Memory limit when using Memoryswap limit, see usage``;
    - ``nano_cpus`` below 0 or above the host's CPUs: ``Range of CPUs is from 0.01 to N.00, as
      there are only N CPUs available``; with ``cpu_period``/``cpu_quota``: ``Conflicting options``;
    - ``cpu_period`` outside 1000..1000000 µs, ``cpu_quota`` positive below 1000 µs.

    ``cpu_shares`` outside 2..262144 is clamped into that range in place (dockerd does the
    same, saying so only in its log); ``pids_limit`` <= 0 means unlimited and is never refused.
    """
    memory = resources.get("memory") or 0
    swap = resources.get("memory_swap") or 0
    nano = resources.get("nano_cpus") or 0
    period = resources.get("cpu_period") or 0
    quota = resources.get("cpu_quota") or 0
    if memory and memory < MIN_MEMORY:
        raise ResourceError("Minimum memory limit allowed is 6MB")
    if swap < -1:
        raise ResourceError(f"Invalid value: {swap}, memory swap must be -1 (unlimited) or positive")
    if memory > 0 and swap > 0 and swap < memory:
        raise ResourceError("Minimum memoryswap limit should be larger than memory limit, see usage")
    if not memory and swap > 0 and not update:
        raise ResourceError("You should always set the Memory limit when using Memoryswap limit, see usage")
    if nano and period:
        raise ResourceError("Conflicting options: Nano CPUs and CPU Period cannot both be set")
    if nano and quota:
        raise ResourceError("Conflicting options: Nano CPUs and CPU Quota cannot both be set")
    n = ncpu or cpu_count()
    if nano < 0 or nano > n * 1_000_000_000:
        raise ResourceError(f"Range of CPUs is from 0.01 to {n}.00, as there are only {n} CPUs available")
    if period and not MIN_CPU_PERIOD_US <= period <= MAX_CPU_PERIOD_US:
        raise ResourceError("CPU cfs period can not be less than 1ms (i.e. 1000) or larger than 1s (i.e. 1000000)")
    if 0 < quota < MIN_CPU_QUOTA_US:
        raise ResourceError("CPU cfs quota can not be less than 1ms (i.e. 1000)")
    shares = resources.get("cpu_shares")
    if shares:
        resources["cpu_shares"] = min(max(shares, MIN_CPU_SHARES), MAX_CPU_SHARES)

"""Shared fixtures: ``instance`` gives a private Dockyard instance that is always cleaned up."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator

import pytest

from tests.engine import Engine
from tests.harness import Instance

TYPE_CHECKING = False
if TYPE_CHECKING:
    from tests.gateway_util import Engine as GatewayEngine


def need_root() -> None:
    """Skip unless running as root with runc on PATH (integration tests need both)."""
    if os.geteuid() != 0 or shutil.which("runc") is None:
        pytest.skip("needs root and runc")


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    """One private instance per test module, driven through ``tests.engine.Engine``."""
    need_root()
    inst = Instance()
    try:
        yield Engine(inst)
    finally:
        inst.cleanup()


@pytest.fixture(scope="module")
def eng() -> Iterator[GatewayEngine]:
    """Dockyard with its gateway (``tests.gateway_util.engine``), one per test module; a module
    that needs other settings, or something done first, defines its own ``eng``."""
    need_root()
    from tests.gateway_util import engine as gateway_engine

    with gateway_engine() as e:
        yield e


@pytest.fixture
def instance() -> Iterator[Instance]:
    """A fresh instance (no service started); everything it made is removed afterwards."""
    inst = Instance()
    try:
        yield inst
    finally:
        inst.cleanup()


@contextlib.contextmanager
def running_instance(**settings: str) -> Iterator[Instance]:
    """A fresh instance (``settings``: ``Instance``'s) running the services a container needs,
    with the busybox image loaded; everything it made is removed afterwards."""
    need_root()
    inst = Instance(**settings)
    try:
        inst.start("events", "snapshot", "image", "execution")
        inst.load_busybox()
        yield inst
    finally:
        inst.cleanup()


@pytest.fixture(scope="module")
def inst() -> Iterator[Instance]:
    """A running instance with the busybox image (``running_instance``), one per test module;
    a module that needs other settings, or a check first, defines its own ``inst``."""
    with running_instance() as i:
        yield i


@pytest.fixture
def dy() -> Iterator[Instance]:
    """A fresh instance running the services a container needs, with the busybox image loaded."""
    with running_instance() as inst:
        yield inst


def _instance_of(value: object) -> Instance | None:
    """The ``Instance`` behind a fixture value (an instance, or an engine holding one)."""
    for candidate in (value, getattr(value, "inst", None)):
        if isinstance(candidate, Instance):
            return candidate
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test that used an instance gets the last lines of each service's log in its
    report (the instance and its logs are gone once the fixtures are torn down), so a
    failure seen once in CI can be read afterwards."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "call" or not report.failed:
        return
    seen: set[str] = set()
    for value in getattr(item, "funcargs", {}).values():
        inst = _instance_of(value)
        if inst is None or inst.state in seen:
            continue
        seen.add(inst.state)
        with contextlib.suppress(OSError):
            for log in sorted(os.listdir(inst.logs)):
                name = log.removesuffix(".log")
                report.sections.append((f"{name} log ({inst.state})", inst.log_tail(name, 30)))

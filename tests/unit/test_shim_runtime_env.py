"""The environment each runtime command gets (``services.shim.runtime``): ``PATH`` alone,
plus ``GOMAXPROCS=1`` for the commands that create or delete a task (``run --detach``,
``create``, ``delete``); the shim's own ``GOMAXPROCS``, when it has one, for every command.
``exec`` otherwise keeps Go's default."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from services.shim.runtime import Runtime


class _Recorder:
    """A reaper that records what it was asked to run instead of running it."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict[str, str] | None]] = []

    async def run(self, argv: Sequence[str], *, env: dict[str, str] | None = None, **_: Any) -> tuple[int, bytes]:
        self.calls.append((list(argv), env))
        return 0, b""


def _runtime(tmp_path: Path) -> tuple[Runtime, _Recorder]:
    rec = _Recorder()
    return Runtime("/usr/sbin/runc", str(tmp_path / "root"), str(tmp_path), rec), rec  # type: ignore[arg-type]


def _env_of(rec: _Recorder, command: str) -> dict[str, str] | None:
    (env,) = [env for argv, env in rec.calls if command in argv]
    return env


def test_create_run_and_delete_go_with_one_scheduler_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOMAXPROCS", raising=False)
    monkeypatch.setenv("PATH", "/sbin:/bin")
    monkeypatch.setenv("SECRET", "not for runc")
    rt, rec = _runtime(tmp_path)

    async def go() -> None:
        await rt.run_detached("c1", str(tmp_path / "init.pid"), {})
        await rt.create("c2", str(tmp_path / "init.pid"), {})
        await rt.delete("c1")
        await rt.exec("c1", str(tmp_path / "process.json"), str(tmp_path / "exec.pid"), {})

    asyncio.run(go())
    for command in ("run", "create", "delete"):
        assert _env_of(rec, command) == {"PATH": "/sbin:/bin", "GOMAXPROCS": "1"}, command
    assert _env_of(rec, "exec") == {"PATH": "/sbin:/bin"}


def test_a_gomaxprocs_of_the_shims_own_is_passed_on_to_every_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's ``GOMAXPROCS`` (in ``dockyard up``'s environment) holds for ``exec`` too."""
    monkeypatch.setenv("GOMAXPROCS", "2")
    monkeypatch.setenv("PATH", "/sbin:/bin")
    rt, rec = _runtime(tmp_path)

    async def go() -> None:
        await rt.run_detached("c1", str(tmp_path / "init.pid"), {})
        await rt.exec("c1", str(tmp_path / "process.json"), str(tmp_path / "exec.pid"), {})
        await rt.kill("c1", 15)

    asyncio.run(go())
    for command in ("run", "exec", "kill"):
        assert _env_of(rec, command) == {"PATH": "/sbin:/bin", "GOMAXPROCS": "2"}, command

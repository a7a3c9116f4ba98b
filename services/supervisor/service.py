"""Supervision of the Dockyard services: start in order, watch, restart with back-off.

The supervisor is what ``dockyard up`` leaves running. It starts each service
(``python -m services.<name>``) in its own session with output appended to
``<state>/logs/<name>.log``, waits for its ``<name>.health`` answer before
starting the next, and watches every service through a pidfd: a service that
dies (SIGKILL, OOM, a bug) is started again after a back-off that doubles from
0.5 s to 30 s while it keeps dying within 10 s of its start (a crash loop), and
goes back to 0.5 s once it has stayed up longer than that. A supervisor that
was itself killed and started again adopts the services still running (found
by their pid files and health answers) instead of starting second copies.

Shims and containers are not the supervisor's children and are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import codec, errors
from common.api.supervisor import ServiceStatus, StatusReply, StopRequest
from common.rpc.server import Context, rpc

log = logging.getLogger(__name__)

_BACKOFF_MIN_S = 0.5
_BACKOFF_MAX_S = 30.0
_STABLE_S = 10.0
"""A service that ran this long before dying was not crash-looping: restart it after the minimum back-off."""


@dataclass
class _Service:
    name: str
    pid: int = 0
    state: str = "stopped"  # starting, running, backoff, stopped
    restarts: int = 0
    started_at: dt.datetime | None = None
    last_exit: str = ""
    backoff_s: float = _BACKOFF_MIN_S
    up_since: float = 0.0
    wanted: bool = True
    exited: asyncio.Event = field(default_factory=asyncio.Event)


HealthCheck = Callable[[str, float], Awaitable[bool]]


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Supervisor:
    """Runs ``services`` in order for one Dockyard instance.

    ``env`` is the environment each service gets (it carries DOCKYARD_ROOT/STATE);
    ``health(name, timeout_s)`` answers whether a service responds.
    """

    def __init__(self, services: tuple[str, ...], state: Path, env: dict[str, str], health: HealthCheck) -> None:
        self.order = services
        self.state = state
        self.env = env
        self.health = health
        self.services = {name: _Service(name) for name in services}
        self.logs = state / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self.all_stopped = asyncio.Event()

    # -- starting ----------------------------------------------------------------------------
    async def start_all(self) -> None:
        """Adopt or start every service, in order, each healthy before the next."""
        for name in self.order:
            svc = self.services[name]
            pid = self._pid_from_file(name)
            if pid and pid_alive(pid) and await self.health(name, 2.0):
                log.info("adopting running %s service (pid %d)", name, pid)
                svc.pid, svc.state, svc.started_at, svc.up_since = pid, "running", codec.utcnow(), time.monotonic()
                self._watch(svc)
                continue
            await self._start(svc)

    def _pid_from_file(self, name: str) -> int:
        try:
            return int((self.state / f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            return 0

    async def _start(self, svc: _Service) -> None:
        svc.state = "starting"
        svc.exited = asyncio.Event()
        logfile = open(self.logs / f"{svc.name}.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                f"services.{svc.name}",
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logfile,
                stderr=logfile,
                start_new_session=True,
            )
        finally:
            logfile.close()
        svc.pid = proc.pid
        svc.started_at = codec.utcnow()
        svc.up_since = time.monotonic()
        self._watch(svc, proc)
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and not svc.exited.is_set():
            if await self.health(svc.name, 1.0):
                svc.state = "running"
                log.info("%s service running (pid %d)", svc.name, svc.pid)
                return
            await asyncio.sleep(0.05)
        if not svc.exited.is_set():
            log.error("%s service did not answer its health check in 30 s", svc.name)
            svc.state = "running"  # keep watching; a dead one is restarted by the watcher

    def _watch(self, svc: _Service, proc: asyncio.subprocess.Process | None = None) -> None:
        old = self._watchers.pop(svc.name, None)
        if old is not None and old is not asyncio.current_task():  # a watcher restarting its own service
            old.cancel()
        self._watchers[svc.name] = asyncio.create_task(self._watch_one(svc, proc), name=f"watch-{svc.name}")

    async def _watch_one(self, svc: _Service, proc: asyncio.subprocess.Process | None) -> None:
        pid = svc.pid
        if proc is not None:
            rc = await proc.wait()
            how = f"signal {-rc}" if rc < 0 else f"status {rc}"
        else:
            await _wait_pid(pid)
            how = "exit (adopted process; status unknown)"
        svc.exited.set()
        svc.last_exit = f"{how} at {codec.utcnow().isoformat()}"
        if not svc.wanted:
            svc.state = "stopped"
            return
        log.warning("%s service (pid %d) died: %s", svc.name, pid, how)
        if time.monotonic() - svc.up_since > _STABLE_S:
            svc.backoff_s = _BACKOFF_MIN_S
        svc.state = "backoff"
        await asyncio.sleep(svc.backoff_s)
        svc.backoff_s = min(svc.backoff_s * 2, _BACKOFF_MAX_S)
        if svc.wanted:
            svc.restarts += 1
            await self._start(svc)

    # -- stopping ----------------------------------------------------------------------------
    async def stop_all(self, timeout_s: float = 15.0) -> None:
        """SIGTERM every service in reverse order, SIGKILL what is left after ``timeout_s``."""
        for name in reversed(self.order):
            svc = self.services[name]
            svc.wanted = False
            if svc.pid and pid_alive(svc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(svc.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(_wait_pid(svc.pid), timeout_s)
                except TimeoutError:
                    log.warning("%s service ignored SIGTERM for %.0f s; killing it", name, timeout_s)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(svc.pid, signal.SIGKILL)
                    await _wait_pid(svc.pid)
            svc.state = "stopped"
        for task in self._watchers.values():
            task.cancel()
        self.all_stopped.set()

    # -- RPC --------------------------------------------------------------------------------------
    @rpc("supervisor.status", quiet=True)
    async def status(self, _req: Any, _ctx: Context) -> StatusReply:
        """Return each service's state, pid, restart count and last exit."""
        out = []
        for name in self.order:
            svc = self.services[name]
            alive = bool(svc.pid) and pid_alive(svc.pid)
            out.append(
                ServiceStatus(
                    name=name,
                    state=svc.state if (alive or svc.state != "running") else "dead",
                    pid=svc.pid if alive else 0,
                    restarts=svc.restarts,
                    started_at=svc.started_at,
                    last_exit=svc.last_exit,
                )
            )
        return StatusReply(pid=os.getpid(), services=out)

    @rpc("supervisor.stop")
    async def stop(self, req: StopRequest, _ctx: Context) -> dict[str, Any]:
        """Stop every service (reverse order), then the supervisor itself exits."""
        if self.all_stopped.is_set():
            raise errors.FailedPrecondition("services are already stopped")
        await self.stop_all(req.timeout_s)
        return {}


async def _wait_pid(pid: int) -> None:
    """Wait until ``pid`` has exited (its pidfd turns readable; a zombie counts as exited)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return  # already gone
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def _readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, _readable)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)

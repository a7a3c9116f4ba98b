"""Supervisor API (the process ``dockyard up`` leaves running).

- ``supervisor.status`` -> ``StatusReply``: each service's state (starting, running,
  backoff, stopped, dead), pid, restart count, start time and last exit.
- ``supervisor.stop`` ``StopRequest`` -> ``{}``: stop every service in reverse order
  (SIGTERM, then SIGKILL after ``timeout_s``); the supervisor exits afterwards.
  Shims and containers keep running.
"""

from __future__ import annotations

import datetime as dt

from pydantic import Field

from common.api.base import Reply, Request


class ServiceStatus(Reply):
    name: str
    state: str
    pid: int = 0
    restarts: int = 0
    started_at: dt.datetime | None = None
    last_exit: str = ""


class StatusReply(Reply):
    pid: int = Field(description="the supervisor's own pid")
    services: list[ServiceStatus]


class StopRequest(Request):
    timeout_s: float = Field(default=15.0, gt=0, le=300, description="SIGKILL a service still running after this")

"""Riding through a restart of the execution service: what the CLI and the gateway share.

Any service may be SIGKILLed and restarted by the supervisor while containers run on
under their shims. A client that follows a container through the execution service (its
output, its log, its exit) loses that stream: an ``Unavailable`` from a call that had not
ended. It then waits for the service to answer again (``RESUME_WAIT_S`` at most, trying
every ``POLL_S``) and takes up where it was. The waiting loops are the callers' (blocking in
``cli.resume``, asyncio in ``services.gateway.resume``); this module holds the pure parts,
with no I/O and nothing heavier than the standard library (the CLI's hot path imports it):

- ``Skip``: the live output of an attachment (``run``, ``start -a``, ``attach``, the
  gateway's attach) resumed from the container's json-file log, exactly once per byte per
  stream, by counting the bytes already shown.
- ``LogFollow``: a ``logs`` stream (``follow`` or not) resumed exactly after the last entry
  received, with the cursor the execution service puts in every frame
  (``services.execution.logs``): no entry lost, none twice, ``tail``/``since``/``until``
  and rotation accounted for.
- ``wait_outcome``: what an interrupted ``execution.wait`` comes to once the service is
  back: the exit it was waiting for (it happened during the outage), or the condition to
  wait for again; ``exit_replay`` and ``journal_exit``: the exit status of a container
  removed meanwhile (``--rm``), from the events journal (``/tasks/exit``, which the shim
  publishes itself).
- ``run_hold``: the hold token of a ``run`` call (a container removed while the call held it
  left its exit status under it: ``execution.wait`` with that ``hold``).
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # typing costs the CLI's hot path an import; type checkers read this as typing's
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

RESUME_WAIT_S = float(os.environ.get("DOCKYARD_RESUME_WAIT_S") or 30.0)
"""How long an outage of the execution service is waited out before giving up (seconds)."""
POLL_S = 0.2
"""Pause between two tries to reach the execution service again (seconds)."""


def run_hold(request_id: str) -> str:
    """The hold token of a foreground ``execution.run`` call with ``request_id``
    (``common.api.execution``, holds): the one its client names when it asks after the
    exit status of its ``--rm`` container once the service is back."""
    return f"run:{request_id}"


ROTATED = "part of the container's output was rotated out of its log before it could be shown again; some is missing"
LOG_GAP = "part of the container's log was rotated out while the execution service restarted; some output is missing"


def rfc3339(ns: int, digits: int = 9) -> str:
    """Unix nanoseconds as the json-file log writes times (``...T12:00:00.123456789Z``);
    ``digits=6`` gives microseconds (what a ``since`` request field takes). Fixed width:
    two such strings compare as their times do."""
    secs, frac = divmod(ns, 1_000_000_000)
    frac //= 10 ** (9 - digits)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:0{digits}d}Z"


class Skip:
    """What of the log's entries was shown already, for resuming an attachment's output.

    The shim writes every byte of output to the log in the same step as it hands it to
    attached clients, and the concatenated entries of one stream are the exact bytes
    written (``services.shim.jsonlog``); so the bytes shown, counted per stream, are skipped
    from where the attachment's output starts in the log, inside an entry if need be.

    ``printed``: bytes shown per stream (1 stdout, 2 stderr) before the loss; ``lost_at``: the
    loss's time as ``rfc3339`` writes it. ``take`` gets the log's entries in order and returns
    the part of each still to show. Rotation: if the log lost its oldest part, counting from
    its start would skip output never shown. Every entry shown before the loss was logged
    before it, so an entry the skip would swallow whole although it was logged after the
    loss shows the skip is off: the skip stops there and ``rotated`` turns True (output
    logged between the restart and the moment the loss was noticed cannot be told apart).
    """

    def __init__(self, printed: dict[int, int], lost_at: str) -> None:
        self.left = {s: n for s, n in printed.items() if n}
        self.lost_at = lost_at
        self.rotated = False

    def take(self, stream: int, data: bytes, stamp: str) -> bytes:
        """The bytes of one log entry (``stamp``: its time, "" if unknown) still to show."""
        left = self.left.get(stream, 0)
        if not left:
            return data
        if len(data) > left:
            self.left[stream] = 0
            return data[left:]  # the rest of an entry shown in part
        if not stamp or stamp <= self.lost_at:
            self.left[stream] = left - len(data)  # shown already
            return b""
        self.left[stream] = 0  # logged after the loss, so never shown: the log lost its oldest part
        self.rotated = True
        return data


class LogFollow:
    """One ``execution.logs`` stream and how to resume it (see module docstring).

    ``body``: the ``LogsRequest`` as first sent (``request`` is it with ``cursor`` on);
    ``seen(frame)`` for every frame received; ``resume_request()`` the request that goes on
    exactly after the last entry received: ``after``/``skip`` from the last cursor (``tail``
    and ``since`` were applied already); with nothing received yet, the first request again,
    its ``tail`` taken as of the first request's time (``tail_as_of``) so that what was
    logged since, during the outage too, all comes after the tail.
    """

    def __init__(self, body: dict[str, Any], started_ns: int | None = None) -> None:
        self.request: dict[str, Any] = {**body, "cursor": True}
        self.started_ns = time.time_ns() if started_ns is None else started_ns
        self.cursor: list[Any] | None = None

    def seen(self, frame: dict[str, Any]) -> bool:
        """Note a frame received; True when it says output was rotated out meanwhile (``gap``)."""
        c = frame.get("c")
        if c:
            self.cursor = [str(c[0]), int(c[1])]
        return bool(frame.get("gap"))

    def resume_request(self) -> dict[str, Any]:
        body = dict(self.request)
        if self.cursor is not None and self.cursor[0]:
            body.pop("tail", None)
            body.pop("tail_as_of", None)
            body["after"], body["skip"] = self.cursor
        elif body.get("tail") is not None and int(body["tail"]) >= 0:
            body["tail_as_of"] = rfc3339(self.started_ns, 6)
        return body


def time_ns(value: Any) -> int | None:
    """A time as ``execution.inspect`` gives ``finished_at`` (an aware datetime off the wire,
    or RFC 3339 text) in unix nanoseconds (microsecond precision); None for none."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        import datetime as dt

        value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
    if value.year <= 1:
        return None  # Go's zero time
    return int(value.timestamp()) * 1_000_000_000 + int(value.microsecond) * 1000


def exit_replay(cid: str, since_ns: int) -> dict[str, Any]:
    """The ``events.replay`` request for the ``/tasks/exit`` events of container ``cid`` since
    ``since_ns`` (unix ns)."""
    return {"since_time": rfc3339(since_ns, 6), "filters": {"topic": ["/tasks/exit"], "container": [cid]}}


def journal_exit(cid: str, envelopes: Iterable[dict[str, Any]]) -> int:
    """The exit status of ``cid``'s last ``/tasks/exit`` (its init process's, not an exec's)
    among the envelopes ``exit_replay`` gives; 0 if there is none."""
    code = 0
    for env in envelopes:
        event = env.get("event") or {}
        if event.get("container_id") == cid and event.get("id", cid) == cid:
            code = int(event.get("exit_status") or 0)
    return code


def wait_outcome(info: dict[str, Any], condition: str, since_ns: int) -> tuple[dict[str, Any] | None, str]:
    """What an ``execution.wait`` for ``condition`` that began at ``since_ns`` (unix ns) and was
    interrupted by a restart comes to, given the container's inspect (``info``) once the
    service is back: ``(reply, "")`` when it is over (``{exit_code, error}``: the container
    exited during the wait, or is not running for ``not-running``), else ``(None, condition)``
    to wait for again (``removed`` is waited for again as long as the container exists).
    """
    state = info.get("state") or {}
    if condition == "removed":
        return None, "removed"
    reply = {"exit_code": int(state.get("exit_code") or 0), "error": str(state.get("error") or "")}
    finished = time_ns(state.get("finished_at"))
    if finished is not None and finished >= since_ns:
        return reply, ""  # it exited while we (and the service) were away
    running = bool(state.get("running")) or state.get("status") in ("running", "paused", "restarting")
    if not running and condition == "not-running":
        return reply, ""
    return None, condition

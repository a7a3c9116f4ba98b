"""Riding through a restart of the execution service while a command shows a container's output.

``run``, ``start -a`` and ``attach`` stream a container's output through the execution
service, which may be SIGKILLed at any moment and restarted by the supervisor; the
container goes on running under its shim. When such a stream is lost (``Unavailable``
from a call that did not end: ``Call.ended``), ``follow`` takes over:

1. It waits for the execution service to answer again (``execution.inspect`` of the
   container, every ``POLL_S``), at most ``RESUME_WAIT_S``; then it gives up with the
   original one-line error and exit 125.
2. It resumes the output exactly once from the container's json-file log
   (``execution.logs`` with ``follow``). The shim writes every byte of output to the log
   in the same step as it hands it to attached clients, and the concatenated entries of
   one stream are the exact bytes written (``services.shim.jsonlog``); so the bytes
   already printed, counted per stream (``printed``; a terminal is one stream), are
   skipped from the log's start (or from ``since``: the first output of a ``start -a``),
   inside an entry or a frame if need be, and the rest is printed.
3. It gets the exit code (``execution.wait``, ``not-running``) and, for ``run --rm``,
   removes the container itself (a restarted service holds the auto-removal of a
   container whose ``run`` client it lost, for that client to read the log first; a
   NotFound there means it is gone already, never a second removal). A ``run --rm`` whose
   container was removed before the lost call's answer went out (the service was killed
   while it waited for ``/containers/delete`` to be journaled) asks for the exit status
   the removal left under the call's hold token (``execution.wait`` with ``hold``).

A restart while ``follow`` resumes is ridden through the same way (the counts go on).
Stdin cannot be resumed exactly (what was in flight is lost, and the shim closes a
``stdin_once`` container's stdin when the attach carrying it goes away), so it is no
longer forwarded after a restart, with a warning on stderr.

Rotation: if the log lost its oldest part (``max-size``/``max-file``), counting from its
start would skip output never printed; ``common.resume.Skip`` notices and a one-line
warning says part of the output is missing.

``wait`` (``wait_exit``) rides through a restart as the gateway's ``docker wait`` does: once
the service answers again, the container's state says whether it exited meanwhile
(``common.resume.wait_outcome``) or is waited for again; a container removed meanwhile
(``--rm``) has its exit status in the events journal.

``logs`` (``follow_logs``) rides through a restart the same way: it waits for the service,
then asks for the log again from right after the last entry it printed, by the cursor the
service puts in each frame (``common.resume.LogFollow``), and goes on until the log (with
``-f``: the container) ends.
"""

from __future__ import annotations

import time

from cli import output
from cli.connect import client
from common import errors
from common.resume import LOG_GAP, POLL_S, RESUME_WAIT_S, ROTATED, LogFollow, exit_replay, journal_exit, wait_outcome
from common.resume import Skip as Skip  # re-exported: cli.resume was their home
from common.resume import rfc3339 as rfc3339

TYPE_CHECKING = False  # typing costs the CLI's hot path an import; type checkers read this as typing's
if TYPE_CHECKING:
    from typing import Any

STDIN_LOST = "the execution service restarted: stdin is no longer forwarded to the container"


def lost_contact(call: Any, exc: errors.DockyardError) -> bool:
    """True when ``exc`` means the service of ``call`` went away mid-stream (not an error it sent)."""
    return isinstance(exc, errors.Unavailable) and not call.ended


def follow(
    container_id: str,
    printed: dict[int, int],
    lost: errors.DockyardError,
    *,
    since: str | None = None,
    auto_remove: bool = False,
    stdin: bool = False,
    start_if_created: bool = False,
    hold: str = "",
) -> int:
    """Resume a lost output stream of ``container_id`` (see module docstring); the exit code.

    ``printed``: bytes already written per stream (1 stdout, 2 stderr), updated as more is
    written; ``lost``: the error shown if the service does not come back; ``since``: where
    this attachment's output starts in the log (RFC 3339; None: the log's start);
    ``auto_remove``: remove the container once it exited (``run --rm``); ``stdin``: stdin was
    forwarded (a warning says it is no more); ``start_if_created``: start the container if
    the lost call had not started it yet (``run``); ``hold``: the lost call's hold token
    (``run --rm``: ``common.resume.run_hold``), under which a service that removed the
    container before the exit status went out kept it (``_removed_exit``). Exits 125 through
    ``output.fail`` when the service stays away or the container is gone without a status.
    """
    if stdin:
        output.warn(STDIN_LOST)
    warned = False
    while True:
        lost_at = rfc3339(time.time_ns())
        info = _answering(container_id, lost)
        if info is None:
            removed = _removed_exit(container_id, hold)
            if removed is not None:
                return removed
            output.fail(f"container {container_id[:12]} was removed before its output could be shown", 125)
        try:
            if start_if_created and info["state"]["status"] == "created":
                client_ = client("execution", timeout_s=60)
                try:
                    client_.call("execution.start", {"id": container_id})
                finally:
                    client_.close()
            warned = _resume_output(container_id, printed, since, lost_at, warned)
            code = _exit_code(container_id)
            if auto_remove:
                _remove(container_id)
            return code
        except (errors.Unavailable, errors.DeadlineExceeded) as exc:
            lost = exc  # gone again: wait for it again, the counts go on
        except errors.NotFound:
            removed = _removed_exit(container_id, hold)
            if removed is not None:
                return removed
            output.fail(f"container {container_id[:12]} was removed before its exit status could be read", 125)
        except errors.DockyardError as exc:
            status = (exc.details or {}).get("exit_status")
            output.fail(exc, status if isinstance(status, int) and status in (126, 127) else 125)


def follow_logs(body: dict[str, Any]) -> None:
    """Print a container's log as ``execution.logs`` with ``body`` (a ``LogsRequest``) streams
    it, riding through restarts of the execution service (see module docstring): each entry
    once, in order; a warning if entries were rotated out of the log meanwhile. Exits 1
    through ``output.fail`` on an error of the service, when it stays away longer than
    ``RESUME_WAIT_S`` or is not there to begin with, or when the container is removed."""
    state = LogFollow(body)
    request = state.request
    ref = str(body["id"])
    first = True
    while True:
        c = client("execution", timeout_s=None)
        call = None
        try:
            call = c.start("execution.logs", request)
            for frame in call:
                if state.seen(frame):
                    output.warn(LOG_GAP)
                data = frame.get("d")
                if data:
                    output.raw(data, int(frame.get("s") or 1))
            return
        except errors.Unavailable as exc:
            if (call is None and first) or (call is not None and call.ended):
                output.fail(exc)  # not up to begin with, or an answer of the service: as before
            lost = exc
        except errors.DockyardError as exc:
            output.fail(exc)
        finally:
            c.close()
        first = False
        if _answering(ref, lost, 1) is None:
            output.fail(f"container {ref} was removed before the rest of its log could be shown")
        request = state.resume_request()


def wait_exit(ref: str, since_ns: int) -> dict[str, Any]:
    """``execution.wait`` for ``not-running`` of the container ``ref`` (id, prefix or name),
    waiting out restarts of the execution service (see module docstring); its reply
    ``{exit_code, error}``. ``since_ns``: when the command began waiting (unix ns): an exit
    since then is the one waited for. Raises the service's errors (NotFound ...) and
    Unavailable when it is not there to begin with; exits 1 through ``output.fail`` when it
    stays away longer than ``RESUME_WAIT_S``."""
    c = client("execution", timeout_s=30)
    try:  # its id: the journal knows a removed container by it, and a name may go to another one
        cid = str(c.call("execution.inspect", {"id": ref})["id"])
    finally:
        c.close()
    body: dict[str, Any] = {"id": cid, "condition": "not-running"}
    while True:
        c = client("execution", timeout_s=None)
        call = None
        try:
            call = c.start("execution.wait", body)
            return call.result()  # type: ignore[no-any-return]
        except errors.Unavailable as exc:
            if call is None or call.ended:
                raise  # not up to begin with (or its own answer): as before
            lost = exc
        finally:
            c.close()
        info = _answering(cid, lost, 1)
        if info is None:  # removed meanwhile (--rm): its exit is in the journal
            return {"exit_code": _journal_exit(cid, since_ns), "error": ""}
        reply, again = wait_outcome(info, str(body["condition"]), since_ns)
        if reply is not None:
            return reply
        body = {"id": cid, "condition": again}


def _journal_exit(cid: str, since_ns: int) -> int:
    """The exit status of the removed container ``cid`` since ``since_ns`` from the events journal."""
    c = client("events", timeout_s=10)
    try:
        return journal_exit(cid, c.stream("events.replay", exit_replay(cid, since_ns)))
    except errors.DockyardError as exc:
        output.warn(f"exit status of removed container {cid[:12]} not read from the events journal: {exc}")
        return 0
    finally:
        c.close()


def _answering(container_id: str, lost: errors.DockyardError, code: int = 125) -> dict[str, Any] | None:
    """Wait (``RESUME_WAIT_S`` at most) until the execution service answers; the container's
    inspect, None when it no longer exists. Gives up with ``lost`` (exit ``code``)."""
    deadline = time.monotonic() + RESUME_WAIT_S
    while True:
        c = client("execution", timeout_s=5)
        try:
            return c.call("execution.inspect", {"id": container_id})  # type: ignore[no-any-return]
        except errors.NotFound:
            return None
        except (errors.Unavailable, errors.DeadlineExceeded):
            if time.monotonic() >= deadline:
                output.fail(lost, code)
        finally:
            c.close()
        time.sleep(POLL_S)


def _removed_exit(container_id: str, hold: str) -> int | None:
    """The exit status the removed container ``container_id`` left for the call that held it
    under ``hold`` (``execution.wait`` for ``removed`` with the hold: its tombstone), None
    without a hold or a tombstone, or when the service cannot say."""
    if not hold:
        return None
    c = client("execution", timeout_s=10)
    try:
        reply = c.call("execution.wait", {"id": container_id, "condition": "removed", "hold": hold})
    except errors.DockyardError:
        return None
    finally:
        c.close()
    return int(reply.get("exit_code", 0))


def _resume_output(container_id: str, printed: dict[int, int], since: str | None, lost_at: str, warned: bool) -> bool:
    """Print what the log holds past ``printed``, following it until the task ends.

    One frame per entry (``timestamps`` without ``stamp_inline``: its time in ``t``) so the
    rotation check sees each entry's time. Returns ``warned`` or'ed with whether the
    rotation warning was printed.
    """
    skip = Skip(printed, lost_at)
    body: dict[str, Any] = {"id": container_id, "follow": True, "timestamps": True}
    if since:
        body["since"] = since
    c = client("execution", timeout_s=None)
    try:
        for frame in c.stream("execution.logs", body):
            stream = int(frame.get("s") or 1)
            data = skip.take(stream, frame["d"], str(frame.get("t") or ""))
            if skip.rotated and not warned:
                output.warn(ROTATED)
                warned = True
            if data:
                output.raw(data, stream)
                printed[stream] = printed.get(stream, 0) + len(data)
    finally:
        c.close()
    return warned


def _exit_code(container_id: str) -> int:
    c = client("execution", timeout_s=None)
    try:
        reply = c.call("execution.wait", {"id": container_id, "condition": "not-running"})
    finally:
        c.close()
    return int(reply.get("exit_code", 0))


def _remove(container_id: str) -> None:
    """``--rm`` after a resume: remove the exited container unless it is gone already."""
    c = client("execution", timeout_s=120)
    try:
        c.call("execution.remove", {"id": container_id})
    except errors.NotFound:
        pass  # the service removed it (its hold ran out): never removed twice
    finally:
        c.close()

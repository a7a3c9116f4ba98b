"""The gateway riding through a restart of the execution service, as the CLI does (``cli.resume``).

A Docker client in the middle of ``wait``, ``logs -f`` or an attach (``docker run``'s
output) when the execution service is SIGKILLed must not see an error: the container runs
on under its shim. When the stream of such a request is lost (``Unavailable`` from a call
that had not ``ended``), the gateway keeps the client's connection open (a chunked body
or a hijacked stream in flight just sends nothing meanwhile), waits for the service to
answer again (``answering``: ``common.resume.RESUME_WAIT_S`` at most), and takes up:

- ``wait_reply``: the wait, by what the container's state says now
  (``common.resume.wait_outcome``); a container removed meanwhile (``--rm``) gets its exit
  status from the events journal (``/tasks/exit``, which the shim publishes itself).
- ``log_frames``: a ``logs`` stream, right after the last entry sent
  (``common.resume.LogFollow``).
- ``attach_output``: an attachment's output, from the container's json-file log, skipping
  the bytes the client got already (``common.resume.Skip``).

Past the bounded wait the original error is raised: the wait answers it in its JSON body,
a streamed body ends without its last chunk (the client sees a broken stream, not a
clean end), a hijacked stream is closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from common import errors
from common.resume import LOG_GAP, POLL_S, RESUME_WAIT_S, ROTATED, LogFollow, Skip, rfc3339, wait_outcome
from common.rpc.aio import AsyncCall, AsyncClient

log = logging.getLogger(__name__)


def lost_contact(call: AsyncCall, exc: BaseException) -> bool:
    """True when ``exc`` means the service of ``call`` went away mid-call (not an error it sent)."""
    return isinstance(exc, errors.Unavailable) and not call.ended


async def answering(execution: AsyncClient, ref: str, lost: errors.DockyardError) -> dict[str, Any] | None:
    """Wait (``RESUME_WAIT_S`` at most) until the execution service answers; the container's
    inspect, None when it no longer exists. Raises ``lost`` when the service stays away."""
    deadline = time.monotonic() + RESUME_WAIT_S
    log.info("execution service lost (%s): waiting for it to resume %s", lost, ref[:12])
    while True:
        try:
            return await execution.call("execution.inspect", {"id": ref}, timeout_s=5)  # type: ignore[no-any-return]
        except errors.NotFound:
            return None
        except (errors.Unavailable, errors.DeadlineExceeded):
            if time.monotonic() >= deadline:
                raise lost from None
        await asyncio.sleep(POLL_S)


async def wait_reply(
    execution: AsyncClient,
    events: AsyncClient,
    cid: str,
    condition: str,
    since_ns: int,
    call: AsyncCall,
) -> dict[str, Any]:
    """The reply (``{exit_code, error}``) of the ``execution.wait`` ``call`` for ``condition``,
    begun at ``since_ns`` (unix ns), waiting out restarts of the execution service. Raises
    the service's errors and, past the bounded wait, the Unavailable that lost the call."""
    while True:
        try:
            return await call.result()  # type: ignore[no-any-return]
        except errors.Unavailable as exc:
            if not lost_contact(call, exc):
                raise
            lost = exc
        finally:
            if not call.done:
                await call.cancel()
        info = await answering(execution, cid, lost)
        if info is None:  # removed meanwhile (--rm): its exit is in the journal
            return await _exit_from_journal(events, cid, since_ns)
        reply, again = wait_outcome(info, condition, since_ns)
        if reply is not None:
            return reply
        call = await execution.start("execution.wait", {"id": cid, "condition": again}, timeout_s=None)


async def _exit_from_journal(events: AsyncClient, cid: str, since_ns: int) -> dict[str, Any]:
    """The exit status of ``cid``'s last ``/tasks/exit`` since ``since_ns`` in the events journal
    (the container was removed while the execution service was away); 0 if there is none."""
    body = {
        "since_time": rfc3339(since_ns, 6),
        "filters": {"topic": ["/tasks/exit"], "container": [cid]},
    }
    code = 0
    try:
        async for env in events.stream("events.replay", body, timeout_s=10):
            event = env.get("event") or {}
            if event.get("container_id") == cid and event.get("id", cid) == cid:
                code = int(event.get("exit_status") or 0)
    except errors.DockyardError as exc:
        log.warning("exit status of removed container %s not read from the journal: %s", cid[:12], exc)
    return {"exit_code": code, "error": ""}


async def log_frames(execution: AsyncClient, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """The frames of ``execution.logs`` with ``body`` (a ``LogsRequest``), each entry once,
    riding through restarts of the execution service (``common.resume.LogFollow``). Ends
    quietly on an error of the service (logged), or when the container is removed; raises
    the Unavailable that lost the stream when the service stays away."""
    state = LogFollow(body)
    request = state.request
    cid = str(body["id"])
    while True:
        call = await execution.start("execution.logs", request, timeout_s=None)
        try:
            while True:
                more, frame = await call.next_frame()
                if isinstance(frame, dict):
                    if state.seen(frame):
                        log.warning("logs of %s: %s", cid[:12], LOG_GAP)
                    if frame.get("d"):
                        yield frame
                if not more:
                    return
        except errors.Unavailable as exc:
            if not lost_contact(call, exc):
                log.info("logs of %s ended: %s", cid[:12], exc)
                return
            lost = exc
        except errors.DockyardError as exc:
            log.info("logs of %s ended: %s", cid[:12], exc)
            return
        finally:
            if not call.done:
                await call.cancel()
        if await answering(execution, cid, lost) is None:
            return
        request = state.resume_request()


async def attach_output(
    execution: AsyncClient,
    cid: str,
    printed: dict[int, int],
    since_ns: int,
    lost: errors.DockyardError,
    wanted: dict[str, bool],
) -> AsyncIterator[dict[str, Any]]:
    """The rest of an attachment's output (``{s, d}`` frames) after its stream was ``lost``:
    from the container's log past ``since_ns`` (unix ns; when the attachment began) with the
    ``printed`` bytes per stream skipped (updated as frames are yielded), until the task ends.
    ``wanted``: the attachment's ``{stdout, stderr}`` flags. Ends when the container is
    removed; raises ``lost`` when the service stays away."""
    warned = False
    while True:
        lost_at = rfc3339(time.time_ns())
        if await answering(execution, cid, lost) is None:
            return
        skip = Skip(printed, lost_at)
        body = {"id": cid, "follow": True, "timestamps": True, "since": rfc3339(since_ns, 6), **wanted}
        call = await execution.start("execution.logs", body, timeout_s=None)
        try:
            while True:
                more, frame = await call.next_frame()
                if isinstance(frame, dict) and frame.get("d"):
                    stream = int(frame.get("s") or 1)
                    data = skip.take(stream, bytes(frame["d"]), str(frame.get("t") or ""))
                    if skip.rotated and not warned:
                        log.warning("attach to %s: %s", cid[:12], ROTATED)
                        warned = True
                    if data:
                        printed[stream] = printed.get(stream, 0) + len(data)
                        yield {"s": stream, "d": data}
                if not more:
                    return
        except errors.Unavailable as exc:
            if not lost_contact(call, exc):
                raise
            lost = exc
        finally:
            if not call.done:
                await call.cancel()

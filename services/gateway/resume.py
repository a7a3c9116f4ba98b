"""The gateway riding through a restart of the execution service, as the CLI does (``cli.resume``).

A Docker client in the middle of ``wait``, ``logs -f`` or an attach (``docker run``'s
output) when the execution service is SIGKILLed must not see an error: the container runs
on under its shim. When the stream of such a request is lost (``Unavailable`` from a call
that had not ``ended``), the gateway keeps the client's connection open (a chunked body
or a hijacked stream in flight just sends nothing meanwhile), waits for the service to
answer again (``answering``: ``common.resume.RESUME_WAIT_S`` at most), and takes up:

- ``wait_reply``: the wait, by what the container's state says now
  (``common.resume.wait_outcome``); a container removed meanwhile (``--rm``) gets the exit
  status its removal kept for the wait's hold token (``execution.wait`` with the ``hold``),
  else the one in the events journal (``/tasks/exit``, which the shim publishes itself).
- ``log_frames``: a ``logs`` stream, right after the last entry sent
  (``common.resume.LogFollow``).
- ``attach_output``: an attachment's output, from the container's json-file log, skipping
  the bytes the client got already (``common.resume.Skip``).

An ``auto_remove`` container (``docker run --rm``) must outlive the outage until its clients
have what they follow: the gateway's attachment and its ``wait`` for ``removed`` carry a
hold token (``common.api.execution``, holds), so that a restarted execution service keeps
a container that exited meanwhile (60 s at most); the wait is sent again under its token,
and ``attach_output`` releases the attachment's once it read the log to its end.

A client's own ``DELETE /containers/{id}`` (docker-py's ``run(remove=True)``: ``logs``
with ``follow``, ``wait``, then remove; its lazily read log stream is read last) must not
cut off a log stream of the same container that is still catching up after the outage:
``FOLLOWERS`` knows the gateway's streams following each container, and ``caught_up``
lets the removal wait (``CATCH_UP_S`` at most) for those that the outage interrupted.

Past the bounded wait the original error is raised: the wait answers it in its JSON body,
a streamed body ends without its last chunk (the client sees a broken stream, not a
clean end), a hijacked stream is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any

from common import errors
from common.resume import (
    LOG_GAP,
    POLL_S,
    RESUME_WAIT_S,
    ROTATED,
    LogFollow,
    Skip,
    exit_replay,
    journal_exit,
    rfc3339,
    wait_outcome,
)
from common.rpc.aio import AsyncCall, AsyncClient

log = logging.getLogger(__name__)

CATCH_UP_S = 10.0
"""How long a removal waits for the gateway's streams of the container to catch up (seconds)."""


class Followers:
    """The gateway's streams following each container's output (``follow``), and when
    the execution service was last lost (``lost_at``, monotonic; ``answering`` notes it)."""

    def __init__(self) -> None:
        self.streams: dict[str, dict[int, tuple[float, asyncio.Event]]] = {}
        self.lost_at = float("-inf")

    @contextlib.contextmanager
    def follow(self, cid: str) -> Iterator[None]:
        """Register one stream of ``cid`` for as long as the ``with`` block runs."""
        ended = asyncio.Event()
        entry = (time.monotonic(), ended)
        mine = self.streams.setdefault(cid, {})
        mine[id(entry)] = entry
        try:
            yield
        finally:
            ended.set()
            mine.pop(id(entry), None)
            if not mine and self.streams.get(cid) is mine:
                del self.streams[cid]

    def any_interrupted(self) -> bool:
        """True when some stream began before the last loss of the service (cheap: no call)."""
        return any(started <= self.lost_at for mine in self.streams.values() for started, _e in mine.values())

    def interrupted(self, cid: str) -> list[asyncio.Event]:
        """The end events of ``cid``'s streams that began before the last loss of the service
        (they are resuming, or will notice the loss shortly)."""
        return [ended for started, ended in self.streams.get(cid, {}).values() if started <= self.lost_at]


FOLLOWERS = Followers()


async def caught_up(execution: AsyncClient, cid: str) -> None:
    """Before the removal of ``cid`` the client asked for: wait (``CATCH_UP_S`` at most) until
    the gateway's streams of it that a restart of the execution service interrupted have sent
    the rest of its log (they end once the container is not running and its log was read).
    Returns at once when there are none, or while the container runs (``rm -f``)."""
    pending = FOLLOWERS.interrupted(cid)
    if not pending:
        return
    try:
        info = await execution.call("execution.inspect", {"id": cid}, timeout_s=5)
    except errors.DockyardError:
        return  # the removal says what is wrong
    if (info.get("state") or {}).get("running"):
        return
    log.info("removal of %s waits for %d stream(s) catching up", cid[:12], len(pending))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in pending)), CATCH_UP_S)


def lost_contact(call: AsyncCall, exc: BaseException) -> bool:
    """True when ``exc`` means the service of ``call`` went away mid-call (not an error it sent)."""
    return isinstance(exc, errors.Unavailable) and not call.ended


async def answering(execution: AsyncClient, ref: str, lost: errors.DockyardError) -> dict[str, Any] | None:
    """Wait (``RESUME_WAIT_S`` at most) until the execution service answers; the container's
    inspect, None when it no longer exists. Raises ``lost`` when the service stays away."""
    deadline = time.monotonic() + RESUME_WAIT_S
    FOLLOWERS.lost_at = time.monotonic()
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
    hold: str = "",
) -> dict[str, Any]:
    """The reply (``{exit_code, error}``) of the ``execution.wait`` ``call`` for ``condition``,
    begun at ``since_ns`` (unix ns), waiting out restarts of the execution service; ``hold``:
    the call's hold token, sent again with it. Raises the service's errors and, past the
    bounded wait, the Unavailable that lost the call."""
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
        if info is None:  # removed meanwhile (--rm): its tombstone has its exit, else the journal
            removed = await _removed_exit(execution, cid, hold)
            return removed if removed is not None else await _exit_from_journal(events, cid, since_ns)
        reply, again = wait_outcome(info, condition, since_ns)
        if reply is not None:
            return reply
        body = {"id": cid, "condition": again, **({"hold": hold} if hold else {})}
        call = await execution.start("execution.wait", body, timeout_s=None)


async def _removed_exit(execution: AsyncClient, cid: str, hold: str) -> dict[str, Any] | None:
    """The exit status (``{exit_code, error}``) the removed container ``cid`` left for the wait
    that held it under ``hold`` (``execution.wait`` with the hold: its tombstone; the service
    may have been killed right after the removal, before its answer went out); None without
    a hold or a tombstone."""
    if not hold:
        return None
    try:
        body = {"id": cid, "condition": "removed", "hold": hold}
        return await execution.call("execution.wait", body, timeout_s=10)  # type: ignore[no-any-return]
    except errors.DockyardError as exc:
        log.info("no exit status kept for the wait on removed container %s: %s", cid[:12], exc)
        return None


async def _exit_from_journal(events: AsyncClient, cid: str, since_ns: int) -> dict[str, Any]:
    """The exit status of ``cid``'s last ``/tasks/exit`` since ``since_ns`` in the events journal
    (the container was removed while the execution service was away); 0 if there is none."""
    envelopes: list[dict[str, Any]] = []
    try:
        async for env in events.stream("events.replay", exit_replay(cid, since_ns), timeout_s=10):
            envelopes.append(env)
    except errors.DockyardError as exc:
        log.warning("exit status of removed container %s not read from the journal: %s", cid[:12], exc)
    return {"exit_code": journal_exit(cid, envelopes), "error": ""}


async def log_frames(execution: AsyncClient, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """The frames of ``execution.logs`` with ``body`` (a ``LogsRequest``), each entry once,
    riding through restarts of the execution service (``common.resume.LogFollow``). Ends
    quietly on an error of the service (logged), or when the container is removed; raises
    the Unavailable that lost the stream when the service stays away."""
    state = LogFollow(body)
    request = state.request
    cid = str(body["id"])
    with FOLLOWERS.follow(cid):
        async for frame in _log_frames(execution, state, request, cid):
            yield frame


async def _log_frames(
    execution: AsyncClient, state: LogFollow, request: dict[str, Any], cid: str
) -> AsyncIterator[dict[str, Any]]:
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
    hold: str = "",
) -> AsyncIterator[dict[str, Any]]:
    """The rest of an attachment's output (``{s, d}`` frames) after its stream was ``lost``:
    from the container's log past ``since_ns`` (unix ns; when the attachment began) with the
    ``printed`` bytes per stream skipped (updated as frames are yielded), until the task ends.
    ``wanted``: the attachment's ``{stdout, stderr}`` flags; ``hold``: its hold token,
    released once the log was read to its end, or when the client is gone. Ends when the
    container is removed; raises ``lost`` when the service stays away."""
    try:
        async for frame in _attach_output(execution, cid, printed, since_ns, lost, wanted):
            yield frame
    finally:
        if hold:
            _spawn(_release(execution, cid, hold))


_releases: set[asyncio.Task[None]] = set()


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` to its end even if the caller is cancelled (a client that went away)."""
    task = asyncio.ensure_future(coro)
    _releases.add(task)
    task.add_done_callback(_releases.discard)


async def _release(execution: AsyncClient, cid: str, hold: str) -> None:
    """``execution.release`` of the hold ``hold`` on ``cid``; gone or unreachable: nothing to do
    (a held removal goes on by itself after its bound)."""
    try:
        await execution.call("execution.release", {"id": cid, "hold": hold}, timeout_s=10)
    except errors.NotFound:
        pass
    except errors.DockyardError as exc:
        log.info("hold on %s not released: %s", cid[:12], exc)


async def _attach_output(
    execution: AsyncClient,
    cid: str,
    printed: dict[int, int],
    since_ns: int,
    lost: errors.DockyardError,
    wanted: dict[str, bool],
) -> AsyncIterator[dict[str, Any]]:
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

"""Progress frames from worker tasks and threads to a streaming RPC handler, in order.

``ProgressPump.run(work)`` yields every frame emitted while ``work`` runs, then a final
``{"status": "done", "result": <work's result>}`` frame (or raises ``work``'s error).
Frames may come from the event loop (``emit``) or from worker threads
(``emit_threadsafe``, which also thins out high-rate byte counters to one per 0.1 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any


class ProgressPump:
    """Frames from worker tasks/threads to the streaming handler, in order."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self._last: dict[str, float] = {}

    def emit(self, frame: dict[str, Any]) -> None:
        self.queue.put_nowait(frame)

    def emit_threadsafe(self, frame: dict[str, Any]) -> None:
        key = f"{frame.get('status')}/{frame.get('id')}"
        now = time.monotonic()
        if frame.get("status") in ("Loading layer", "Importing") and now - self._last.get(key, 0) < 0.1:
            return
        self._last[key] = now
        self.loop.call_soon_threadsafe(self.queue.put_nowait, frame)

    async def run(self, work: Awaitable[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        """Yield frames until ``work`` finishes, then the final ``done`` frame (or raise its error)."""
        task = asyncio.ensure_future(work)
        try:
            while True:
                getter = asyncio.ensure_future(self.queue.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                    continue
                getter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await getter
                break
            while not self.queue.empty():
                yield self.queue.get_nowait()
            result = task.result()
            yield {"status": "done", "result": result}
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

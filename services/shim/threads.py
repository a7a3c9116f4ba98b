"""Blocking calls of the shim in threads of their own (see ``in_new_thread``)."""

from __future__ import annotations

import _thread
import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")


async def in_new_thread(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` in a thread of its own; its result or exception.

    Not ``asyncio.to_thread``: the default executor's first use imports
    ``concurrent.futures`` and ``queue`` and waits for its thread to start (~1.2 ms of a
    shim at its task's exit, where the unmount runs), and closing the loop starts one more
    thread to shut it down. This thread is started without a wait and ends with ``fn``.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[_T] = loop.create_future()

    def settle(result: Any, exc: BaseException | None) -> None:
        if done.done():
            return
        if exc is None:
            done.set_result(result)
        else:
            done.set_exception(exc)

    def run() -> None:
        result: Any = None
        exc: BaseException | None = None
        try:
            result = fn(*args)
        except BaseException as e:  # handed to the awaiting task
            exc = e
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, result, exc)

    _thread.start_new_thread(run, ())
    return await done

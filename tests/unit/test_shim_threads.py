"""``services.shim.threads.in_new_thread``: a blocking call's result or exception, off the
event loop, without the loop's default executor."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from services.shim.threads import in_new_thread


def test_the_result_comes_back_and_the_loop_runs_meanwhile() -> None:
    async def go() -> None:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        ticker = asyncio.create_task(tick())
        where = await in_new_thread(lambda: (time.sleep(0.1), threading.get_ident())[1])
        ticker.cancel()
        assert where != threading.get_ident()
        assert ticks >= 5  # the loop went on while the call blocked
        assert asyncio.get_running_loop()._default_executor is None  # type: ignore[attr-defined]

    asyncio.run(go())


def test_an_exception_reaches_the_caller() -> None:
    def fails(path: str) -> None:
        raise FileNotFoundError(2, "No such file or directory", path)

    async def go() -> None:
        with pytest.raises(FileNotFoundError, match="nowhere"):
            await in_new_thread(fails, "/nowhere")

    asyncio.run(go())


def test_a_call_still_running_when_the_loop_closes_is_dropped_quietly() -> None:
    finished = threading.Event()

    def slow() -> None:
        time.sleep(0.1)
        finished.set()

    async def go() -> None:
        task = asyncio.ensure_future(in_new_thread(slow))
        await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(go())
    assert finished.wait(2)  # the thread ended on its own; its answer found the loop closed

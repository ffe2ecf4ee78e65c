"""The view thread pool answers each call's caller, and keeps serving when a caller's event
loop closed before its answer came."""

import asyncio
import threading

import pytest

from exchange.view_threads import ViewThreads


def test_calls_run_on_the_pool_and_answer_their_caller():
    pool = ViewThreads(2)

    async def main() -> int:
        doubled = await pool.run(lambda x: x * 2, 21)
        with pytest.raises(ValueError):
            await pool.run(int, "not a number")
        return doubled

    assert asyncio.run(main()) == 42
    assert pool.submit(sum, [1, 2]).result(timeout=5) == 3
    with pytest.raises(ZeroDivisionError):
        pool.submit(lambda: 1 / 0).result(timeout=5)


def test_an_answer_for_a_closed_event_loop_does_not_take_the_thread_down():
    pool = ViewThreads(1)
    started, release = threading.Event(), threading.Event()

    def slow() -> int:
        started.set()
        release.wait(5)
        return 1

    async def abandon() -> None:
        task = asyncio.ensure_future(pool.run(slow))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
        task.cancel()

    asyncio.run(abandon())  # the loop is closed while `slow` still runs
    release.set()
    assert pool.submit(lambda: "still serving").result(timeout=5) == "still serving"

"""The view thread pool answers each call's caller, keeps serving when a caller's event loop
closed before its answer came, and keeps no query log from one call to the next."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from exchange.view_threads import ViewThreads, database_sync_to_async


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


@pytest.mark.django_db
def test_a_view_thread_logs_only_the_queries_of_its_current_call_under_debug(settings):
    """Under DEBUG (as `make run` sets it) Django logs every query of a connection and forgets
    them when a request starts, a signal these threads never see: each thread's log had kept
    every query up to Django's cap of 9,000 (~10 MB a thread, 32 threads)."""
    settings.DEBUG = True
    pool = ViewThreads(1)

    def one_query() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return len(connection.queries_log)

    try:
        logged = [pool.submit(one_query).result(timeout=5) for _ in range(5)]
    finally:
        pool.submit(lambda: connection.close()).result(timeout=5)  # its own connection
    assert logged == [1] * 5


@pytest.mark.django_db
def test_a_database_call_of_the_event_loop_logs_only_its_own_queries_under_debug(settings):
    """The socket's and the market hub's database calls run on the event loop's executor
    threads, which live as long as the process: under DEBUG each had kept every query."""
    settings.DEBUG = True
    executor = ThreadPoolExecutor(max_workers=1)

    def one_query() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return len(connection.queries_log)

    call = database_sync_to_async(one_query, thread_sensitive=False, executor=executor)

    async def main() -> list[int]:
        return [await call() for _ in range(5)]

    try:
        logged = asyncio.run(main())
    finally:
        executor.submit(lambda: connection.close()).result(timeout=5)  # its own connection
        executor.shutdown()
    assert logged == [1] * 5

"""Sync API views run on a pool of long-lived threads instead of a new thread per request.

Under ASGI, Django runs a sync view with `thread_sensitive=True` inside a per-request context,
which starts a fresh thread for every request (and hops to it for each sync middleware hook).
`pooled(view)` turns a sync view (a DRF `as_view()`) into an async one that runs the view, and
renders its response, on `API_VIEW_THREADS` long-lived threads; the thread hands its database
connection back to the pool when the view returns, so a thread never keeps one between
requests. The view's own code is unchanged: same authentication, permissions, rate limits,
errors and audit records; drf-spectacular still finds the DRF view class for the schema.
"""

import asyncio
import contextvars
import functools
import logging
import queue
import threading
from concurrent.futures import Executor, Future

from asgiref.sync import AsyncToSync, sync_to_async
from channels.db import DatabaseSyncToAsync
from django.conf import settings
from django.db import connections, reset_queries
from django.http import HttpResponse
from django.urls import URLPattern, URLResolver

logger = logging.getLogger(__name__)


class ViewThreads(Executor):
    """`size` long-lived threads taking calls from one queue.

    `run` (from the event loop) hands a call to a thread and resolves the awaiting future
    through the loop; `submit` is the `Executor` form (for `sync_to_async(executor=...)`).
    Lighter than `ThreadPoolExecutor` plus `sync_to_async` per request: no thread-count
    bookkeeping on each call, no future chained to another. Calls run in a copy of the
    caller's context, as `sync_to_async` runs them.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._started = False
        self._start_lock = threading.Lock()

    def _ensure_started(self) -> None:
        if self._started:
            return
        with self._start_lock:
            if not self._started:
                for n in range(self._size):
                    threading.Thread(target=self._work, name=f"api-view-{n}", daemon=True).start()
                self._started = True

    async def run(self, fn, /, *args, **kwargs):
        self._ensure_started()
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._calls.put((contextvars.copy_context(), fn, args, kwargs, loop, waiter))
        return await waiter

    def submit(self, fn, /, *args, **kwargs) -> Future:
        self._ensure_started()
        future: Future = Future()
        self._calls.put((contextvars.copy_context(), fn, args, kwargs, None, future))
        return future

    def _work(self) -> None:
        while True:
            context, fn, args, kwargs, loop, waiter = self._calls.get()
            if loop is None and not waiter.set_running_or_notify_cancel():
                continue
            query_log_forget()  # each call is a request of its own
            try:
                result = context.run(fn, *args, **kwargs)
            except BaseException as exc:  # handed to the caller, as an executor does
                settle, outcome = _set_exception, exc
            else:
                settle, outcome = _set_result, result
            if loop is None:
                settle(waiter, outcome)
                continue
            try:
                loop.call_soon_threadsafe(settle, waiter, outcome)
            except RuntimeError:  # the caller's loop has closed: nobody waits for this answer
                logger.warning("view finished after its event loop closed")


def query_log_forget() -> None:
    """Empty this thread's query log, as Django does when a request starts (request_started),
    which never happens on a thread that serves calls for the process's life (view, order
    entry and event loop executor threads, Celery tasks, the demo's loop). Under DEBUG (`make
    run`) Django logs every query: each such thread's log had filled to Django's cap of 9,000
    queries (~10 MB), +400 MB for the web process in hours. Without DEBUG nothing is logged."""
    if settings.DEBUG:
        reset_queries()


class QueryLogForgettingSyncToAsync(DatabaseSyncToAsync):
    """Channels' `database_sync_to_async` (the event loop's database calls: socket logins and
    subscriptions, the market hub's session watch), also forgetting the thread's DEBUG query
    log before each call (`query_log_forget`): the loop's executor threads live as long as
    the process."""

    def thread_handler(self, loop, *args, **kwargs):
        query_log_forget()
        return super().thread_handler(loop, *args, **kwargs)


database_sync_to_async = QueryLogForgettingSyncToAsync


def _set_result(waiter: asyncio.Future | Future, result) -> None:
    if not waiter.done():  # an awaiting task may have been cancelled
        waiter.set_result(result)


def _set_exception(waiter: asyncio.Future | Future, exc: BaseException) -> None:
    if not waiter.done():
        waiter.set_exception(exc)


_executor: ViewThreads | None = None


def view_executor() -> ViewThreads:
    global _executor
    if _executor is None:
        _executor = ViewThreads(settings.API_VIEW_THREADS)
    return _executor


def _rendered(view, request, *args, **kwargs):
    response = view(request, *args, **kwargs)
    render = getattr(response, "render", None)
    if render is not None and not getattr(response, "is_rendered", True):
        response = render()
    return response


def _run_view(view, request, *args, **kwargs):
    try:
        response = _rendered(view, request, *args, **kwargs)
        if hasattr(response, "render"):
            # Rendered already; a plain response spares Django a thread hop to render it again.
            plain = HttpResponse(response.content, status=response.status_code)
            for name, value in response.items():
                plain[name] = value
            plain.cookies = response.cookies
            if getattr(response, "_has_been_logged", False):  # a 503 logged as an outage
                plain._has_been_logged = True
            _drf_cycles_break(response)
            response = plain
        return response
    finally:
        for connection in connections.all(initialized_only=True):
            connection.close()  # back to the pool (or closed when pooling is off)


def _drf_cycles_break(response) -> None:
    """Unlink a rendered DRF response's view, request and response from each other.

    DRF links them both ways (the view holds the request and the response; the request's
    parser context and the response's renderer context hold the view, the request its own
    context), so every request left its whole object graph (~60-115 objects) for the cyclic
    garbage collector: under load, in-flight requests survived young collections into the old
    generation and set off a full collection every few seconds (~100 ms with every thread
    stopped, the WebSocket fan-out's p99). Unlinked, reference counting frees them at once."""
    context = getattr(response, "renderer_context", None) or {}
    view = context.get("view")
    drf_request = context.get("request")
    if drf_request is not None:
        drf_request.parser_context = None
    if view is not None:
        view.request = view.response = None
        vars(view).pop("head", None)  # View.setup's `self.head = self.get`: a bound method
    response.renderer_context = None


def pooled(view):
    """The async twin of the sync view `view`, run on the view thread pool; called from sync
    code (the WSGI handler, Django's test client) it runs in the calling thread, as before."""

    @functools.wraps(view)
    async def async_view(request, *args, **kwargs):
        if getattr(AsyncToSync.executors, "current", None) is not None:
            run = sync_to_async(_rendered, thread_sensitive=True)
            return await run(view, request, *args, **kwargs)
        return await view_executor().run(_run_view, view, request, *args, **kwargs)

    return async_view


def pooled_patterns(patterns: list) -> list:
    """`patterns` with every view (in included modules too) made `pooled`; in place."""
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            pooled_patterns(pattern.url_patterns)
        elif isinstance(pattern, URLPattern) and not getattr(pattern.callback, "is_pooled", False):
            pattern.callback = pooled(pattern.callback)
            pattern.callback.is_pooled = True
    return patterns

"""Sync API views run on a pool of long-lived threads instead of a new thread per request.

Under ASGI, Django runs a sync view with `thread_sensitive=True` inside a per-request context,
which starts a fresh thread for every request (and hops to it for each sync middleware hook).
`pooled(view)` turns a sync view (a DRF `as_view()`) into an async one that runs the view, and
renders its response, on `API_VIEW_THREADS` long-lived threads; the thread hands its database
connection back to the pool when the view returns, so a thread never keeps one between
requests. The view's own code is unchanged: same authentication, permissions, rate limits,
errors and audit records; drf-spectacular still finds the DRF view class for the schema.
"""

import functools
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import AsyncToSync, sync_to_async
from django.conf import settings
from django.db import connections
from django.http import HttpResponse
from django.urls import URLPattern, URLResolver

_executor: ThreadPoolExecutor | None = None


def view_executor() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(
            max_workers=settings.API_VIEW_THREADS, thread_name_prefix="api-view"
        )
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
            response = plain
        return response
    finally:
        for connection in connections.all(initialized_only=True):
            connection.close()  # back to the pool (or closed when pooling is off)


def pooled(view):
    """The async twin of the sync view `view`, run on the view thread pool; called from sync
    code (the WSGI handler, Django's test client) it runs in the calling thread, as before."""

    @functools.wraps(view)
    async def async_view(request, *args, **kwargs):
        if getattr(AsyncToSync.executors, "current", None) is not None:
            run = sync_to_async(_rendered, thread_sensitive=True)
        else:
            run = sync_to_async(_run_view, thread_sensitive=False, executor=view_executor())
        return await run(view, request, *args, **kwargs)

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

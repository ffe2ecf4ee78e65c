"""The ASGI handler for API requests signed with an API key (`X-API-KEY` under /api/).

It is Django's `ASGIHandler` (same middleware, URL resolution, views and error handling), with
the per-request machinery that such a request does not need taken out:
- no `ThreadSensitiveContext`: Django opens one per request, whose first thread-sensitive call
  starts a thread that is joined when the request ends. A signed API request has no such call
  to make: its view runs on the view thread pool (`exchange.view_threads`) and the middleware
  skips the session machinery for it (`exchange.middleware`);
- no request_started / request_finished signals: their receivers (Django's own: reset the
  query log, close the calling thread's database connections and caches, reset the URLconf)
  would act on the event loop's thread, which holds no database connection or cache client
  and sets no URLconf; the view thread hands its connections back itself
  (`exchange.view_threads`). The project connects no receiver of its own to them;
- no watcher task for a client disconnect: the view runs in a pool thread, which a cancelled
  task could not stop anyway; the answer to a client that went away is dropped by the server.
"""

import contextlib

from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.urls import set_script_prefix

_API_PREFIX = "/api/"
_KEY_HEADER = b"x-api-key"


def signed_api_scope(scope) -> bool:
    """An HTTP request under /api/ carrying an API key header (its signature is checked by the
    view's authentication like any other request's)."""
    return (
        scope["type"] == "http"
        and scope["path"].startswith(_API_PREFIX)
        and any(name == _KEY_HEADER for name, _ in scope["headers"])
    )


class SignedApiHandler(ASGIHandler):
    async def __call__(self, scope, receive, send):
        await self.handle(scope, receive, send)

    async def handle(self, scope, receive, send):
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        try:
            set_script_prefix(get_script_prefix(scope))
            request, response = self.create_request(scope, body_file)
            if request is not None:
                response = await self.run_get_response(request)
            await self.send_response(response, send)
            _close_quietly(response)
        finally:
            body_file.close()


def _close_quietly(response) -> None:
    """`response.close()` without its request_finished signal (see the module docstring)."""
    for closer in response._resource_closers:
        with contextlib.suppress(Exception):  # as Django's close() does
            closer()
    response._resource_closers.clear()
    response.closed = True

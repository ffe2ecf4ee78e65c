"""The ASGI handler for API requests signed with an API key (`X-API-KEY` under /api/).

It is Django's `ASGIHandler` (same middleware, URL resolution, views and error handling), with
the per-request machinery that such a request does not need taken out:
- no `ThreadSensitiveContext`: Django opens one per request, whose first thread-sensitive call
  starts a thread that is joined when the request ends. A signed API request has no such call
  to make: its view runs on the view thread pool (`exchange.view_threads`) and the middleware
  skips the session machinery for it (`exchange.middleware`);
- the request_started / request_finished signals run inline: their receivers (reset query
  logs, close this thread's database connections and caches, reset the URLconf) do no I/O in
  the event loop's thread, which holds no database connection; Django hands them to a thread;
- no watcher task for a client disconnect: the view runs in a pool thread, which a cancelled
  task could not stop anyway; the answer to a client that went away is dropped by the server.
"""

from django.core import signals
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
            signals.request_started.send(sender=self.__class__, scope=scope)
            request, response = self.create_request(scope, body_file)
            if request is not None:
                response = await self.run_get_response(request)
            await self.send_response(response, send)
            response.close()  # sends request_finished
        finally:
            body_file.close()

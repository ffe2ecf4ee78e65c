"""The ASGI handler for API requests signed with an API key (`X-API-KEY` under /api/).

It is Django's `ASGIHandler` (same middleware, URLs, views, error handling), minus the
per-request thread: Django opens a `ThreadSensitiveContext` for every request, whose first
thread-sensitive call starts a new thread that is joined when the request ends. A signed API
request has none to make (its views run on the view thread pool, see
`exchange.view_threads`, and the middleware skips the session machinery for it, see
`exchange.middleware`) except closing the response, which here runs on asgiref's one shared
sync thread instead of a thread of its own.
"""

from django.core.handlers.asgi import ASGIHandler

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

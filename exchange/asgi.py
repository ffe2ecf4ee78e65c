"""ASGI entry point: HTTP through Django, WebSocket through Channels."""

import contextlib
import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exchange.settings")

# Static files (admin, Swagger UI) are answered here, before Django's middleware chain, which
# stays all-async: a sync-only middleware in it would cost thread hops on every request.
django_asgi_app = ASGIStaticFilesHandler(get_asgi_application())

from exchange.signed_api_handler import SignedApiHandler, signed_api_scope  # noqa: E402

signed_api_app = SignedApiHandler()


async def http_application(scope, receive, send):
    """Requests signed with an API key take the lean handler; everything else Django's own."""
    if signed_api_scope(scope):
        await signed_api_app(scope, receive, send)
    else:
        await django_asgi_app(scope, receive, send)


from urllib.parse import urlparse  # noqa: E402

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs the app registry ready)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import OriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.utils.http import is_same_domain  # noqa: E402

from accounts.channels_auth import TwoFactorSessionMiddleware  # noqa: E402
from exchange.routing import websocket_refused, websocket_urlpatterns  # noqa: E402
from exchange.ws_direct import capture_raw_send  # noqa: E402


class BrowserOriginValidator(OriginValidator):
    """A browser's Origin must be the socket's own origin (the Host it connects to, a host of
    ALLOWED_HOSTS) or one of CSRF_TRUSTED_ORIGINS: the rule Django's CSRF check applies to the
    same session cookie's POSTs. (Only the Origin's host name had been checked, so a page on
    another port of the same host, same-site and sent the SameSite=Lax session cookie, opened
    sockets signed in as its visitor.) The scheme is not compared with the socket's: behind a
    TLS proxy the server sees ws:// for an https:// page. A client without an Origin header is
    not a browser and is let through (it logs in with a signed API key)."""

    def valid_origin(self, parsed_origin, host: str | None = None) -> bool:
        if parsed_origin is None:
            return True
        if origin_csrf_trusted(parsed_origin):
            return True
        return (
            host is not None
            and parsed_origin.netloc.lower() == host.lower()
            and self.validate_origin(parsed_origin)
        )

    async def __call__(self, scope, receive, send):
        origin = host = None
        for name, value in scope.get("headers", []):
            with contextlib.suppress(UnicodeDecodeError, ValueError):
                if name == b"origin":
                    origin = urlparse(value.decode("latin1"))
                elif name == b"host":
                    host = value.decode("latin1")
        if self.valid_origin(origin, host):
            return await self.application(scope, receive, send)
        # Refused at the handshake (403), answered here: Channels' own denier is a consumer
        # of the Redis channel layer, and each refusal opened a Redis receive (tracebacks
        # when it timed out).
        return await websocket_refused(scope, receive, send)


def origin_csrf_trusted(parsed_origin) -> bool:
    """The origin is one of CSRF_TRUSTED_ORIGINS (scheme and host, `*.` for subdomains), as
    Django's CSRF check reads them."""
    netloc = parsed_origin.netloc.lower()
    for trusted in settings.CSRF_TRUSTED_ORIGINS:
        pattern = urlparse(trusted.lower())
        if pattern.scheme != parsed_origin.scheme.lower():
            continue
        if pattern.netloc == netloc or (
            pattern.netloc.startswith("*") and is_same_domain(netloc, pattern.netloc[1:])
        ):
            return True
    return False


def allowed_origins() -> list[str]:
    hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not hosts:
        hosts = ["localhost", "127.0.0.1", "[::1]"]
    return hosts


application = ProtocolTypeRouter(
    {
        "http": http_application,
        # The server's own send stays reachable for the market-data fan-out (ws_direct).
        "websocket": capture_raw_send(
            BrowserOriginValidator(
                # A session that still owes the OTP step is anonymous on the socket.
                AuthMiddlewareStack(TwoFactorSessionMiddleware(URLRouter(websocket_urlpatterns))),
                allowed_origins(),
            )
        ),
    }
)

from exchange.gc_tuning import serving_gc  # noqa: E402

serving_gc()  # last: everything the process loads at start-up is frozen out of the collector

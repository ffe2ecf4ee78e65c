"""Django's middleware, without a thread hop per hook.

Under ASGI, a `MiddlewareMixin` middleware runs each of its hooks through
`sync_to_async(thread_sensitive=True)`: two hops to the request's thread per middleware, a dozen
per request, which cost more CPU than an order's own work. The classes here are the same
middleware (subclasses: `exchange/checks.py` checks by class that they are installed, where
Django's deploy checks look for its own class paths), changed in how they are called:
- `InlineHooks`: hooks that do no I/O (headers, redirects, the rate-limit headers) run in the
  event loop itself;
- `SkippedForApiKeys`: session, CSRF, session authentication and messages do nothing for an
  API request signed with an API key (`X-API-KEY` under /api/: DRF authenticates it, and it
  has no session or cookie); other requests run them as before, hops included, because they
  may touch the database (loading or saving a session).

`NulCharacterGuard` comes first: it refuses a NUL character in the path or the query string;
`UnsizedBodyGuard` next: it refuses an API request body sent without a Content-Length.
`ContentSecurityPolicyMiddleware` gives the traders' pages their Content-Security-Policy.
"""

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.http import HttpResponseBadRequest, JsonResponse
from django.middleware import clickjacking, common, csrf, security
from django.utils.deprecation import MiddlewareMixin

from accounts import rate_limits
from exchange.errors import trading_error


def signed_api_request(request) -> bool:
    """An API request carrying an API key (its signature is checked by the DRF view)."""
    return "HTTP_X_API_KEY" in request.META and request.path_info.startswith("/api/")


class InlineHooks:
    """Run `process_request` / `process_response` inline in the event loop."""

    async def __acall__(self, request):
        response = None
        if hasattr(self, "process_request"):
            response = self.process_request(request)
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            response = self.process_response(request, response)
        return response


class SkippedForApiKeys:
    """Pass a signed API request straight through; any other runs the middleware as usual."""

    async def __acall__(self, request):
        if signed_api_request(request):
            return await self.get_response(request)
        return await super().__acall__(request)


class NulCharacterGuard(InlineHooks, MiddlewareMixin):
    """A 400 for a NUL character (%00) in the path or the query string, before any view.

    No identifier, symbol or filter of ours holds one, and PostgreSQL refuses it in a text
    parameter: passed on, it made the lookup by client_order_id, the symbol of the market data
    endpoints and the list filters fail with a 500. (Request bodies go through the serializers,
    whose text fields refuse it with InvalidParameter.)"""

    def process_request(self, request):
        if "\x00" not in request.path and "%00" not in request.META.get("QUERY_STRING", ""):
            return None
        message = "the path or the query string holds a NUL character (%00), which nothing accepts"
        if request.path.startswith("/api/"):
            return JsonResponse(trading_error("MalformedRequest", message).as_dict(), status=400)
        return HttpResponseBadRequest(message)


class UnsizedBodyGuard(InlineHooks, MiddlewareMixin):
    """A 400 for an API request whose body comes without a Content-Length (`Transfer-Encoding:
    chunked`, as Go's client or a streaming one sends it). DRF reads a body only by its
    Content-Length: such a body was taken as none, so an order was refused 'symbol: This field
    is required' (it was sent) and a web session's DELETE /orders with one cancelled every
    order; Django's 2.5 MB body limit does not see it either."""

    def process_request(self, request):
        meta = request.META
        if (
            "HTTP_TRANSFER_ENCODING" not in meta
            or "CONTENT_LENGTH" in meta
            or not request.path.startswith("/api/")
        ):
            return None
        message = (
            "a request body without a Content-Length header (Transfer-Encoding: "
            f"{meta['HTTP_TRANSFER_ENCODING'][:20]!r}) is not read: send it with its Content-Length"
        )
        return JsonResponse(trading_error("MalformedRequest", message).as_dict(), status=400)


# The traders' pages load only their own scripts, styles and images (ES modules from static/,
# no inline script, style or event handler) and talk only to their own origin (REST and the
# WebSocket): an injected <script> or inline handler would not run, nor could a page be framed.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        # Our stylesheet, and the <style> the chart library adds for its attribution logo (the
        # lightweight-charts of package-lock.json: the browser tests fail if an upgrade changes it)
        "style-src 'self' 'sha256-3pRED1tOXas1FXFoPb9TGCjmYe9XQsmO9OV23khV2nY='",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
# Pages of others' templates with inline scripts or styles: the admin (django-celery-beat's
# task form, the change list's own style) and Swagger UI (drf-spectacular's page).
CSP_EXEMPT_PREFIXES = ("/admin/", "/api/docs/")


class ContentSecurityPolicyMiddleware(InlineHooks, MiddlewareMixin):
    """CONTENT_SECURITY_POLICY on every HTML page but the admin's and Swagger UI's."""

    def process_response(self, request, response):
        if (
            response.get("Content-Type", "").startswith("text/html")
            and not request.path.startswith(CSP_EXEMPT_PREFIXES)
            and "Content-Security-Policy" not in response
        ):
            response["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return response


# What Django's add_never_cache_headers writes, as one constant: that helper also wrote an
# Expires of now (formatting the date on every answer) and parsed the header it had just set,
# ~12 µs an answer here against ~0.7 for this. HTTP/1.1 caches go by Cache-Control alone.
PRIVATE_NO_STORE = "max-age=0, no-cache, no-store, must-revalidate, private"


class PrivateApiNoStore(InlineHooks, MiddlewareMixin):
    """An API answer to a request with credentials (an API key, or the web session's cookie)
    may be the caller's alone: no shared cache or proxy may keep it (balances, orders, fills,
    keys had gone out without any Cache-Control). Answers to requests without credentials
    (public market data) stay cacheable."""

    def process_response(self, request, response):
        if (
            request.path.startswith("/api/")
            and (
                "HTTP_X_API_KEY" in request.META or settings.SESSION_COOKIE_NAME in request.COOKIES
            )
            and "Cache-Control" not in response
        ):
            response["Cache-Control"] = PRIVATE_NO_STORE
        return response


class SecurityMiddleware(InlineHooks, security.SecurityMiddleware):
    pass


class CommonMiddleware(InlineHooks, common.CommonMiddleware):
    pass


class XFrameOptionsMiddleware(InlineHooks, clickjacking.XFrameOptionsMiddleware):
    pass


class UsedWeightHeadersMiddleware(InlineHooks, rate_limits.UsedWeightHeadersMiddleware):
    pass


class SessionMiddleware(SkippedForApiKeys, sessions.SessionMiddleware):
    pass


class AuthenticationMiddleware(SkippedForApiKeys, auth.AuthenticationMiddleware):
    pass


class MessageMiddleware(SkippedForApiKeys, messages.MessageMiddleware):
    pass


class CsrfViewMiddleware(SkippedForApiKeys, csrf.CsrfViewMiddleware):
    """Its view hook too: Django would otherwise call it through a thread hop on every
    request (the API's DRF views are CSRF-exempt, the hook returns at once for them)."""

    async def process_view(self, request, callback, callback_args, callback_kwargs):
        if signed_api_request(request):
            return None
        check = sync_to_async(super().process_view, thread_sensitive=True)
        return await check(request, callback, callback_args, callback_kwargs)

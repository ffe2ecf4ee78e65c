"""WebSocket counterpart of the OTP step: a half-signed-in session is anonymous on sockets."""

from channels.middleware import BaseMiddleware
from django.contrib.auth.models import AnonymousUser

from accounts.two_factor import session_two_factor_pending
from exchange.view_threads import database_sync_to_async


class TwoFactorSessionMiddleware(BaseMiddleware):
    """Runs inside Channels' AuthMiddlewareStack: if the session's user has an authenticator
    and the session is not verified with one of their devices, the socket sees no user."""

    async def __call__(self, scope, receive, send):
        user = scope.get("user")
        if getattr(user, "is_authenticated", False):
            pending = await database_sync_to_async(session_two_factor_pending)(
                user, scope.get("session")
            )
            if pending:
                scope = dict(scope, user=AnonymousUser())
        return await super().__call__(scope, receive, send)

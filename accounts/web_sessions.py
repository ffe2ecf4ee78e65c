"""A web session that ends (logout, a changed password, a deactivated user) ends the WebSocket
connections opened with it, as it ends the next HTTP request of that session.

A counter in Redis moves whenever a session may have ended; a socket signed in with a web
session looks its session up again only when the counter moved since its last look (one Redis
GET otherwise), on each ping and before each order op.
"""

from importlib import import_module

from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY
from django.db import transaction
from django.utils.crypto import constant_time_compare

from accounts.models import User
from exchange.redis_connection import change_counter_bump, change_counter_read, redis_key


def sessions_ended_key() -> str:
    return redis_key("sessions", "ended")


def sessions_ended_bump() -> None:
    change_counter_bump(
        sessions_ended_key(), unsignalled="ended web session not signalled to sockets"
    )


def sessions_ended_counter() -> bytes | None:
    """The counter every logout, password change and deactivation moves (None without Redis)."""
    return change_counter_read(sessions_ended_key())


def session_signs_in(*, session_key: str | None, user_id: int) -> bool:
    """The web session `session_key` still signs in active user `user_id`: it exists and has
    not expired, names that user, and carries the user's current password hash (a password
    change ends the user's other sessions), as Django checks on each HTTP request."""
    user = User.objects.filter(pk=user_id, is_active=True).first()
    if user is None or not session_key:
        return False
    data = import_module(settings.SESSION_ENGINE).SessionStore(session_key).load()
    return data.get(SESSION_KEY) == str(user_id) and constant_time_compare(
        data.get(HASH_SESSION_KEY, ""), user.get_session_auth_hash()
    )


def web_sessions_clear_expired() -> None:
    """Delete the web sessions past their expiry. Django never deletes one by itself: a session
    that was not logged out (a browser closed, a cookie dropped) stayed in the session table
    for good, one row per such sign-in (what `manage.py clearsessions` does)."""
    import_module(settings.SESSION_ENGINE).SessionStore.clear_expired()


def user_logged_out_sessions_ended(sender, request, user, **kwargs) -> None:
    transaction.on_commit(sessions_ended_bump)


def user_saved_sessions_recheck(sender, instance: User, **kwargs) -> None:
    """post_save: a deactivation or a new password may end sessions (`_password` is set by
    set_password until the save completes)."""
    if not instance.is_active or getattr(instance, "_password", None) is not None:
        transaction.on_commit(sessions_ended_bump)

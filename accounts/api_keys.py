"""API keys: create and revoke (each with its audit record), look up, and read the secret.

The secret is shown once, at creation. HMAC needs it on the server, so it is stored encrypted
(Fernet: AES-128-CBC + HMAC-SHA256) with a key derived by HKDF from API_KEY_ENCRYPTION_KEY, or
from SECRET_KEY when that is empty. The signature check itself is accounts/signing.py.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from rest_framework import status

from accounts.models import APIKey, ApiKeyPermission, User
from accounts.signing import KeyCredentials, ip_networks
from audit.events import AuditEvent
from audit.services import audit_record
from exchange.errors import trading_error
from exchange.redis_connection import change_counter_bump, change_counter_read, redis_key

# Credentials read for a signature check are kept per process for a while, so a signed request
# costs one Redis GET instead of a query and a decryption. Every revocation bumps a counter in
# Redis and the cache is only used while the counter is unchanged, so a revoked key is refused
# at once by every process; without Redis nothing is cached.
CREDENTIALS_CACHE_SECONDS = 10.0
CREDENTIALS_CACHE_MAX = 10_000
_credentials_cache: dict[str, tuple[float, bytes, KeyCredentials, User]] = {}

MAX_LABEL_LENGTH = 100
MAX_ALLOWLIST_ENTRIES = 50
PERMISSION_NAMES = tuple(str(p) for p in ApiKeyPermission)


# ---- the secret at rest -------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _fernet(material: str) -> Fernet:
    derived = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"exchange.accounts.api_keys",
        info=b"api key secret encryption v1",
    ).derive(material.encode())
    return Fernet(base64.urlsafe_b64encode(derived))


def _cipher() -> Fernet:
    return _fernet(settings.API_KEY_ENCRYPTION_KEY or settings.SECRET_KEY)


def secret_encrypt(secret: str) -> str:
    return _cipher().encrypt(secret.encode()).decode("ascii")


def secret_decrypt(token: str) -> str | None:
    """The plain secret, or None when it was encrypted under another key (key rotated)."""
    try:
        return _cipher().decrypt(token.encode("ascii")).decode()
    except InvalidToken:
        return None


# ---- writes -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CreatedApiKey:
    """A new key and its secret: the only time the secret is available in plain text."""

    api_key: APIKey
    secret: str


def _clean_permissions(permissions: Iterable[str] | None) -> set[str]:
    if permissions is None:
        return {ApiKeyPermission.READ.value}
    if isinstance(permissions, str) or not all(isinstance(p, str) for p in permissions):
        raise trading_error(
            "InvalidParameter", "permissions must be a list of strings", field="permissions"
        )
    chosen = set(permissions)
    unknown = sorted(chosen - set(PERMISSION_NAMES))
    if unknown:
        raise trading_error(
            "InvalidParameter",
            f"unknown permission {unknown[0]!r} (one of {', '.join(PERMISSION_NAMES)})",
            field="permissions",
        )
    if not chosen:
        raise trading_error(
            "InvalidParameter", "a key needs at least one permission", field="permissions"
        )
    return chosen


def _clean_allowlist(entries: Iterable[str] | None) -> list[str]:
    if entries is None:
        return []
    if isinstance(entries, str) or not all(isinstance(e, str) for e in entries):
        raise trading_error(
            "InvalidParameter", "ip_allowlist must be a list of strings", field="ip_allowlist"
        )
    entries = list(entries)
    if len(entries) > MAX_ALLOWLIST_ENTRIES:
        raise trading_error(
            "InvalidParameter",
            f"at most {MAX_ALLOWLIST_ENTRIES} allow-list entries",
            field="ip_allowlist",
        )
    try:
        networks = ip_networks(entries)
    except ValueError as exc:
        raise trading_error("InvalidParameter", str(exc), field="ip_allowlist") from None
    return list(dict.fromkeys(str(net) for net in networks))


@transaction.atomic
def api_key_create(
    *,
    user: User,
    label: str,
    permissions: Iterable[str] | None = None,
    ip_allowlist: Iterable[str] | None = None,
    request: Any = None,
) -> CreatedApiKey:
    """Create a key (permissions default to `read` only) and record it in the audit trail."""
    label = (label or "").strip() if isinstance(label, str) else ""
    if not label or len(label) > MAX_LABEL_LENGTH:
        raise trading_error(
            "InvalidParameter", f"label must be 1-{MAX_LABEL_LENGTH} characters", field="label"
        )
    chosen = _clean_permissions(permissions)
    allowlist = _clean_allowlist(ip_allowlist)
    secret = secrets.token_urlsafe(32)
    api_key = APIKey.objects.create(
        user=user,
        label=label,
        key=secrets.token_hex(16),
        secret_encrypted=secret_encrypt(secret),
        can_read=ApiKeyPermission.READ in chosen,
        can_trade=ApiKeyPermission.TRADE in chosen,
        can_withdraw=ApiKeyPermission.WITHDRAW in chosen,
        ip_allowlist=allowlist,
    )
    audit_record(
        event_type=AuditEvent.API_KEY_CREATED,
        actor=user,
        user_id=user.pk,
        payload={
            "api_key_id": api_key.pk,
            "key": api_key.key,
            "label": label,
            "permissions": api_key.permissions,
            "ip_allowlist": allowlist,
        },
        request=request,
    )
    return CreatedApiKey(api_key=api_key, secret=secret)


@transaction.atomic
def api_key_revoke(*, api_key: APIKey, actor: Any, request: Any = None) -> APIKey:
    """Revoke a key for good (its next request is refused); revoking twice changes nothing."""
    locked = APIKey.objects.select_for_update().get(pk=api_key.pk)
    if locked.revoked_at is None:
        locked.revoked_at = timezone.now()
        locked.save(update_fields=["revoked_at"])
        transaction.on_commit(_revocations_bump)
        audit_record(
            event_type=AuditEvent.API_KEY_REVOKED,
            actor=actor,
            user_id=locked.user_id,
            payload={"api_key_id": locked.pk, "key": locked.key, "label": locked.label},
            request=request,
        )
    return locked


def api_key_mark_used(
    *, credentials: KeyCredentials, ip: str | None, now: dt.datetime | None = None
) -> None:
    """Refresh last_used_at/ip, at most once per API_KEY_LAST_USED_INTERVAL_SECONDS per key:
    no query while the value read with the credentials is fresh, then a conditional UPDATE,
    so concurrent requests and processes write it once."""
    now = now or timezone.now()
    stale_before = now - dt.timedelta(seconds=settings.API_KEY_LAST_USED_INTERVAL_SECONDS)
    if credentials.last_used_at is not None and credentials.last_used_at >= stale_before:
        return
    APIKey.objects.filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=stale_before), pk=credentials.id
    ).update(last_used_at=now, last_used_ip=ip)
    cached = _credentials_cache.get(credentials.key)
    if cached is not None:
        fresher = dataclasses.replace(cached[2], last_used_at=now)
        _credentials_cache[credentials.key] = (cached[0], cached[1], fresher, cached[3])


def revocations_key() -> str:
    return redis_key("api_keys", "revocations")


def _revocations_bump() -> None:
    # Without Redis the cache lives out its seconds in other processes.
    change_counter_bump(
        revocations_key(), unsignalled="API key revocation not signalled to the caches"
    )
    _credentials_cache.clear()


def revocations_counter() -> bytes | None:
    """The counter every key revocation and user deactivation bumps (None without Redis): a
    holder of credentials read earlier needs to look again only when it changed."""
    return change_counter_read(revocations_key())


def user_saved_keys_recheck(sender, instance: User, **kwargs) -> None:
    """A deactivated user's keys stop working at once, like revoked ones (post_save)."""
    if not instance.is_active:
        transaction.on_commit(_revocations_bump)


def api_key_credentials_cached(key: str) -> tuple[KeyCredentials, User] | None:
    """`api_key_credentials`, from this process's cache while it is fresh and no key has been
    revoked since it was read (one Redis GET)."""
    revocations = revocations_counter()
    if revocations is None:
        return api_key_credentials(key)
    now = time.monotonic()
    cached = _credentials_cache.get(key)
    if (
        cached is not None
        and cached[1] == revocations
        and now - cached[0] < CREDENTIALS_CACHE_SECONDS
    ):
        return cached[2], cached[3]
    found = api_key_credentials(key)
    if found is not None:
        if len(_credentials_cache) >= CREDENTIALS_CACHE_MAX:
            _credentials_cache.clear()
        _credentials_cache[key] = (now, revocations, *found)
    return found


def api_key_auth_failure_record(
    *,
    reason: str,
    api_key: str | None,
    credentials: KeyCredentials | None,
    request: Any,
    method: str,
    path: str,
    permission: str | None = None,
    user: User | None = None,
) -> None:
    """Audit a refused API-key request or login: bad credentials (auth failed) or a correctly
    signed request the key may not make (permission, IP allow-list, a web-session-only
    endpoint: access denied; `user` is
    then the key's owner, the proven actor)."""
    denied = reason in ("missing_permission", "ip_not_allowed", "session_required")
    payload = {"reason": reason, "key": (api_key or "")[:64], "method": method, "path": path}
    if permission:
        payload["permission"] = permission
    key_id, user_id = (credentials.id, credentials.user_id) if credentials else (None, None)
    if credentials is None and api_key and reason not in ("unknown_key", "missing_header"):
        # Refused before the lookup (timestamp, receive window): still name the key's owner.
        found = APIKey.objects.filter(key=api_key[:64]).values_list("pk", "user_id").first()
        key_id, user_id = found or (None, None)
    if key_id is not None and request is not None:
        request.api_key_id = key_id
    audit_record(
        event_type=AuditEvent.API_KEY_ACCESS_DENIED if denied else AuditEvent.API_KEY_AUTH_FAILED,
        actor=user if denied and user is not None else "anonymous",
        user_id=user_id,
        payload=payload,
        request=request,
    )


# ---- reads --------------------------------------------------------------------------------------
def api_keys_for_user(*, user: User) -> QuerySet[APIKey]:
    """The user's keys, newest first (revoked ones too: their history stays visible)."""
    return APIKey.objects.filter(user=user).order_by("-created_at", "-pk")


def api_key_for_user(*, user: User, api_key_id: int) -> APIKey:
    """One of the user's keys; another user's key is a 404, as a missing one."""
    found = APIKey.objects.filter(user=user, pk=api_key_id).first()
    if found is None:
        raise trading_error(
            "ApiKeyNotFound", "API key not found", http_status=status.HTTP_404_NOT_FOUND
        )
    return found


def api_key_credentials(key: str) -> tuple[KeyCredentials, User] | None:
    """The key's credentials and user for a signature check (one query), or None."""
    if not key or len(key) > 64:
        return None
    found = APIKey.objects.select_related("user").filter(key=key).first()
    if found is None:
        return None
    secret = secret_decrypt(found.secret_encrypted)
    credentials = KeyCredentials(
        id=found.pk,
        key=found.key,
        user_id=found.user_id,
        secret=secret or "",
        permissions=frozenset(found.permissions),
        ip_allowlist=ip_networks(found.ip_allowlist),
        # A secret that no longer decrypts (encryption key changed) is as good as revoked.
        revoked=found.revoked_at is not None or secret is None,
        user_active=found.user.is_active,
        last_used_at=found.last_used_at,
    )
    return credentials, found.user

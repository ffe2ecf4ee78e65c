"""DRF adapters of API keys: the signed-request authentication and the key permissions.

- `ApiKeyAuthentication`: a request carrying X-API-KEY is checked by accounts/signing.py (and
  refused with 401/403 in the API's error shape, recorded in the audit trail); `request.auth`
  is then the key's `KeyCredentials`. Without X-API-KEY the next class (the web session) runs.
- `ApiKeyPermission` (a default permission class): web-session users pass; an API-key request
  needs the key permission the view asks for the method (`key_permissions = {"POST": "trade"}`
  on the view), else `read` for GET/HEAD/OPTIONS and `trade` for the others.
- `requires_key_permission("withdraw")`: the same, one permission for every method.
- `WebSessionOnly`: refuses API keys altogether (keys cannot mint keys).

DRF imports these classes when `rest_framework.views` is first imported (they are the
APIView defaults), so this module imports the services and the error catalogue (which import
`rest_framework.views` themselves) inside the functions that use them.
"""

from __future__ import annotations

import time

from django.http.request import RawPostDataException
from django.utils.encoding import escape_uri_path
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import Throttled
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from accounts.signing import KeyCredentials, SignatureRejected, SignedRequest, signature_verify


def _api_error(error: str, message: str, http_status: int):
    from exchange.errors import trading_error

    return trading_error(error, message, http_status=http_status)


def signed_path(django_request) -> str:
    """The path as the client sent it: ASGI's raw path (percent-encoding intact) when the
    server gives it, else the decoded path encoded again."""
    raw = getattr(django_request, "scope", {}).get("raw_path")
    if raw:
        return raw.decode("latin-1")
    return escape_uri_path(django_request.path)


def _body(django_request) -> bytes:
    try:
        return django_request.body
    except RawPostDataException:  # a multipart body already streamed: cannot be verified
        return b"\x00unreadable"


class ApiKeyAuthentication(BaseAuthentication):
    """HMAC-signed requests: X-API-KEY, X-API-TIMESTAMP, X-API-SIGNATURE, X-API-RECV-WINDOW."""

    def authenticate(self, request: Request):
        from accounts.api_keys import (
            api_key_auth_failure_record,
            api_key_credentials_cached,
            api_key_mark_used,
        )

        django_request = request._request
        meta = django_request.META
        api_key = meta.get("HTTP_X_API_KEY")
        if api_key is None:
            return None
        signed = SignedRequest(
            api_key=api_key,
            timestamp=meta.get("HTTP_X_API_TIMESTAMP"),
            signature=meta.get("HTTP_X_API_SIGNATURE"),
            recv_window=meta.get("HTTP_X_API_RECV_WINDOW"),
            method=django_request.method,
            path=signed_path(django_request),
            query=meta.get("QUERY_STRING", ""),
            body=_body(django_request),
            client_ip=meta.get("REMOTE_ADDR"),
        )
        users = {}

        def lookup(key: str) -> KeyCredentials | None:
            found = api_key_credentials_cached(key)
            if found is None:
                return None
            users[found[0].id] = found[1]
            return found[0]

        try:
            credentials = signature_verify(
                signed=signed, lookup=lookup, now_ms=time.time_ns() // 1_000_000
            )
        except SignatureRejected as rejected:
            from accounts.rate_limits import auth_failure_allowed

            if not auth_failure_allowed(client_ip=signed.client_ip):
                raise _refusals_throttled() from None
            owner = users.get(rejected.credentials.id) if rejected.credentials else None
            api_key_auth_failure_record(
                reason=rejected.reason,
                api_key=api_key,
                credentials=rejected.credentials,
                request=django_request,
                method=signed.method,
                path=signed.path,
                user=owner,
            )
            raise _api_error(rejected.error, rejected.message, rejected.http_status) from None
        # The audit trail reads the key id from the request (audit.services._request_fields).
        django_request.api_key_id = credentials.id
        api_key_mark_used(credentials=credentials, ip=signed.client_ip)
        return users[credentials.id], credentials

    def authenticate_header(self, request: Request) -> str:
        return 'APIKey realm="api"'


def _refusals_throttled() -> Throttled:
    """The 429 of a client address past its budget of refused key requests (not audited)."""
    return Throttled(
        wait=60 - time.time() % 60,
        detail="too many refused API key requests from this address; wait a minute.",
    )


def _record_denied(request: Request, reason: str, permission: str | None = None) -> None:
    from accounts.api_keys import api_key_auth_failure_record
    from accounts.rate_limits import auth_failure_allowed

    django_request = request._request
    # The budget of refused signatures: a denied request is refused before the rate limits
    # count it, and a read-only key had written an audit record for each order it sent, some
    # three hundred a second.
    if not auth_failure_allowed(client_ip=django_request.META.get("REMOTE_ADDR")):
        raise _refusals_throttled()
    api_key_auth_failure_record(
        reason=reason,
        api_key=request.auth.key,
        credentials=request.auth,
        request=django_request,
        method=django_request.method,
        path=django_request.path,
        permission=permission,
        user=request.user,
    )


def key_permission_check(request: Request, permission: str) -> None:
    """Raise 403 ApiKeyPermissionMissing (and audit it) when the request's API key lacks
    `permission`; a web-session request passes."""
    credentials = request.auth
    if not isinstance(credentials, KeyCredentials) or credentials.allows(permission):
        return
    _record_denied(request, "missing_permission", permission)
    raise _api_error(
        "ApiKeyPermissionMissing", f"this API key lacks the {permission!r} permission", 403
    )


class ApiKeyPermission(BasePermission):
    """Web-session users pass; API keys need the permission the view asks for the method."""

    def required(self, request: Request, view) -> str:
        per_method = getattr(view, "key_permissions", None) or {}
        if request.method in per_method:
            return per_method[request.method]
        return "read" if request.method in SAFE_METHODS else "trade"

    def has_permission(self, request: Request, view) -> bool:
        key_permission_check(request, self.required(request, view))
        return True


def requires_key_permission(permission: str) -> type[ApiKeyPermission]:
    """A permission class asking API keys for `permission` on every method, e.g.
    `permission_classes = [IsAuthenticated, requires_key_permission("withdraw")]`."""
    if permission not in ("read", "trade", "withdraw"):
        raise ValueError(f"unknown API key permission {permission!r}")

    class RequiresKeyPermission(ApiKeyPermission):
        def required(self, request: Request, view) -> str:
            return permission

    RequiresKeyPermission.__name__ = f"RequiresKey{permission.title()}Permission"
    return RequiresKeyPermission


class WebSessionOnly(BasePermission):
    """Refuses API-key requests (403 SessionRequired): e.g. creating or revoking keys."""

    def has_permission(self, request: Request, view) -> bool:
        if isinstance(request.auth, KeyCredentials):
            _record_denied(request, "session_required")
            raise _api_error(
                "SessionRequired",
                "sign in to the web session for this; API keys cannot manage API keys",
                403,
            )
        return True

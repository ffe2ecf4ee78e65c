"""The one error shape of the API: {"error", "code", "message", "field"}.

Codes are stable (clients switch on them; messages may change). Raise `ApiError` from a view
or service; DRF's own exceptions (validation, authentication, 404, throttling) are mapped to
the same shape by `api_exception_handler`.
"""

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler


class ApiError(exceptions.APIException):
    """An error with a stable name and numeric code, optionally naming the input at fault."""

    def __init__(
        self,
        *,
        error: str,
        code: int,
        message: str,
        field: str | None = None,
        http_status: int = status.HTTP_400_BAD_REQUEST,
        extra: dict | None = None,
    ) -> None:
        super().__init__(detail=message)
        self.error = error
        self.error_code = code
        self.message = message
        self.field = field
        self.status_code = http_status
        self.extra = extra or {}

    def as_dict(self) -> dict:
        body = {"error": self.error, "code": self.error_code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        body.update(self.extra)
        return body


# DRF exception class -> (error name, stable code).
_DRF_ERRORS: list[tuple[type[exceptions.APIException], str, int]] = [
    (exceptions.NotAuthenticated, "NotAuthenticated", -1002),
    (exceptions.AuthenticationFailed, "AuthenticationFailed", -1003),
    (exceptions.PermissionDenied, "PermissionDenied", -1004),
    (exceptions.NotFound, "NotFound", -1005),
    (exceptions.MethodNotAllowed, "MethodNotAllowed", -1006),
    (exceptions.NotAcceptable, "NotAcceptable", -1007),
    (exceptions.UnsupportedMediaType, "UnsupportedMediaType", -1008),
    (exceptions.Throttled, "TooManyRequests", -1015),
    (exceptions.ParseError, "MalformedRequest", -1100),
    (exceptions.ValidationError, "InvalidParameter", -1102),
]


def _first_validation_error(detail, prefix: str = "") -> tuple[str | None, str]:
    """The first (field path, message) of a nested ValidationError detail."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = key if key != "non_field_errors" else None
            path = f"{prefix}.{name}" if prefix and name else (name or prefix or None)
            field, message = _first_validation_error(value, path or "")
            return field or path, message
    if isinstance(detail, list) and detail:
        return _first_validation_error(detail[0], prefix)
    return (prefix or None), str(detail)


def api_exception_handler(exc, context):
    if isinstance(exc, ApiError):
        return Response(exc.as_dict(), status=exc.status_code)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None:
        return None
    name, code = next(
        ((name, code) for cls, name, code in _DRF_ERRORS if isinstance(exc, cls)), ("Error", -1000)
    )
    field = None
    if isinstance(exc, exceptions.ValidationError):
        field, message = _first_validation_error(exc.detail)
        message = f"{field}: {message}" if field else message
    else:
        message = str(exc.detail)
    body = {"error": name, "code": code, "message": message}
    if field:
        body["field"] = field
    response.data = body
    return response

"""The one error shape of the API: {"error", "code", "message", "field"}.

Codes are stable (clients switch on them; messages may change). Raise `ApiError` from a view
or service; DRF's own exceptions (validation, authentication, 404, throttling) are mapped to
the same shape by `api_exception_handler`, and so is any other failure: the database out of
reach (a restart, a failover) is a 503 `ServiceUnavailable` a client can retry, a bug a 500
`Error`, never Django's HTML error page.
"""

import logging

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.db import InterfaceError, InternalError, OperationalError, connection
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler, set_rollback

# Logged as Django logs an exception it turns into a 500 itself.
request_logger = logging.getLogger("django.request")

# SQLSTATEs of a database out of reach: its connection failed (class 08), the server is
# shutting down or starting (57P01-57P03), or a lock was not granted within DB_LOCK_TIMEOUT_MS
# (55P03: a matching worker stuck mid-batch holds it). Other operational errors (a deadlock,
# 40P01; a serialization failure, 40001) are not an outage: they are 500s.
_OUTAGE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "55P03")
# The session was ended, idle inside its transaction past DB_IDLE_IN_TRANSACTION_TIMEOUT_MS (a
# process stalled mid-transaction): rolled back whole, its connection gone. psycopg raises it as
# an InternalError, not an OperationalError.
_SESSION_ENDED_IDLE = "25P03"


def database_unavailable(exc: BaseException) -> bool:
    """The database's connection failed (the server restarting, a failover, a dropped
    connection): the client may retry. Whether the request took effect is unknown when the
    connection failed at COMMIT; an order retried with the same client_order_id is placed at
    most once."""
    sqlstate = getattr(exc.__cause__, "sqlstate", None)
    if isinstance(exc, InternalError):
        return sqlstate == _SESSION_ENDED_IDLE
    if not isinstance(exc, OperationalError | InterfaceError):
        return False
    return sqlstate is None or sqlstate.startswith(_OUTAGE_SQLSTATES)


def broken_connections_discard() -> None:
    """After a connection failure: close this thread's connection and have the pool test its
    idle ones, dropping the dead (a failover ends them all at once, and the pool had handed
    them out one by one: one client met four 503s in a row)."""
    connection.close()
    pool = getattr(connection, "pool", None)  # the psycopg pool, when pooling is on
    if pool is not None:
        pool.check()


SERVICE_UNAVAILABLE_BODY = {
    "error": "ServiceUnavailable",
    "code": -1001,
    "message": "the exchange's database is out of reach for a moment: retry shortly (an order "
    "retried with the same client_order_id is placed at most once)",
}
# Every ServiceUnavailable (the database's, the order book's) tells the client when to retry.
SERVICE_UNAVAILABLE_HEADERS = {"Retry-After": "1"}
INTERNAL_ERROR_BODY = {"error": "Error", "code": -1000, "message": "internal error"}


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
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail=message)
        self.error = error
        self.error_code = code
        self.message = message
        self.field = field
        self.status_code = http_status
        self.extra = extra or {}
        self.headers = headers

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


def _first_validation_error(detail, prefix: str = "") -> tuple[str | None, str, str | None]:
    """The first (field path, message, DRF code) of a nested ValidationError detail."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = key if key != "non_field_errors" else None
            path = f"{prefix}.{name}" if prefix and name else (name or prefix or None)
            field, message, code = _first_validation_error(value, path or "")
            return field or path, message, code
    if isinstance(detail, list) and detail:
        return _first_validation_error(detail[0], prefix)
    return (prefix or None), str(detail), getattr(detail, "code", None)


def api_exception_handler(exc, context):
    if isinstance(exc, ApiError):
        return Response(exc.as_dict(), status=exc.status_code, headers=exc.headers)
    if isinstance(exc, RequestDataTooBig):  # a body over DATA_UPLOAD_MAX_MEMORY_SIZE
        body = {
            "error": "PayloadTooLarge",
            "code": -1101,  # as in exchange.errors.ERROR_CODES
            "message": f"the request body is over {settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,} bytes",
        }
        return Response(body, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exc, SuspiciousOperation):  # e.g. over 1,000 query parameters
        body = {"error": "MalformedRequest", "code": -1100, "message": str(exc)}
        return Response(body, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None:
        request = context.get("request")
        set_rollback()
        if database_unavailable(exc):
            broken_connections_discard()
            # An outage the client retries through, logged as what it is (it had been logged
            # "Internal Server Error", status 500, with a traceback: false alerts on 500s).
            request_logger.warning(
                "Service Unavailable (database out of reach): %s",
                getattr(request, "path", "?"),
                extra={"status_code": 503, "why": str(exc).strip()[:200]},
            )
            response = Response(
                SERVICE_UNAVAILABLE_BODY, status=503, headers=SERVICE_UNAVAILABLE_HEADERS
            )
            # Logged just above: Django would log the 503 again, at ERROR (its flag for that).
            response._has_been_logged = True
            return response
        request_logger.error(
            "Internal Server Error: %s",
            getattr(request, "path", "?"),
            exc_info=exc,
            extra={"status_code": 500, "request": getattr(request, "_request", request)},
        )
        return Response(INTERNAL_ERROR_BODY, status=500)
    name, code = next(
        ((name, code) for cls, name, code in _DRF_ERRORS if isinstance(exc, cls)), ("Error", -1000)
    )
    field = None
    if isinstance(exc, exceptions.ValidationError):
        field, message, drf_code = _first_validation_error(exc.detail)
        message = f"{field}: {message}" if field else message
        if drf_code == "required":
            # As the catalogue names a missing field (a missing price said so; a missing symbol,
            # side or order_type read InvalidParameter).
            name, code = "MissingParameter", -1105  # as in exchange.errors.ERROR_CODES
    else:
        message = str(exc.detail)
    body = {"error": name, "code": code, "message": message}
    if field:
        body["field"] = field
    response.data = body
    return response


def error_answer(exc: exceptions.APIException) -> tuple[int, dict]:
    """The HTTP status and error body REST answers `exc` with (for the socket's answers and for
    the audit of a refused order)."""
    response = api_exception_handler(exc, {})
    return response.status_code, dict(response.data)

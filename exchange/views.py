"""HTTP views of the trading core: thin adapters over services and selectors."""

from django.core.exceptions import DisallowedHost
from django.http import JsonResponse
from django.views import defaults
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from exchange.health import HEALTH_STATUSES, health_status


class HealthView(APIView):
    """Deployment health: PostgreSQL, Redis and each matching shard's heartbeat."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []  # probes and load balancers must never see a 429

    @extend_schema(
        operation_id="healthz",
        responses={
            (200, "application/json"): inline_serializer(
                "Health",
                fields={
                    "status": serializers.ChoiceField(choices=HEALTH_STATUSES),
                    "failing": serializers.ListField(child=serializers.CharField()),
                    "components": serializers.DictField(),
                },
            ),
            (503, "application/json"): inline_serializer(
                "HealthDown",
                fields={
                    "status": serializers.CharField(),
                    "failing": serializers.ListField(child=serializers.CharField()),
                    "components": serializers.DictField(),
                },
            ),
        },
    )
    def get(self, request: Request) -> Response:
        report, http_status = health_status()
        return Response(report, status=http_status)


class ApiPathNotFoundView(APIView):
    """Any /api/ path that no endpoint matches (say /api/v1/orders/-1): the API's 404 error
    shape, where Django would answer with an HTML page. Unauthenticated, so a signed request
    to a wrong path hears "no such endpoint" rather than a signature error; rate limited per
    client IP like public market data."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    schema = None  # not an endpoint of the OpenAPI document

    def not_found(self, request: Request, *args, **kwargs) -> Response:
        # Named, not sent back whole: a path may be as long as the server takes (kilobytes).
        path = request.path if len(request.path) <= 80 else request.path[:77] + "..."
        raise NotFound(
            f"no API endpoint {request.method} {path} (the endpoints are listed at /api/docs/)"
        )

    get = post = put = patch = delete = head = options = not_found


def bad_request(request, exception):
    """Django's 400 (a Host header the exchange does not serve, another suspicious request
    refused before any view): under /api/ in the API's JSON error shape, elsewhere Django's
    page. It had been an HTML page under /api/ too."""
    if not request.path.startswith("/api/"):
        return defaults.bad_request(request, exception)
    if isinstance(exception, DisallowedHost):
        message = "the Host header names no host this exchange serves (ALLOWED_HOSTS)"
    else:
        message = "the request was refused as malformed"
    body = {"error": "MalformedRequest", "code": -1100, "message": message}  # errors.ERROR_CODES
    return JsonResponse(body, status=400)

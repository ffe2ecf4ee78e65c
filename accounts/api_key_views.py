"""REST endpoints of API keys (/api/v1/api-keys): list, create, read, revoke your own keys.

Creating and revoking need the web session: an API key can list keys (with `read`) but never
mint or revoke one, so a leaked key cannot make itself a successor or lock its owner out.
"""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api_key_auth import WebSessionOnly
from accounts.api_keys import (
    PERMISSION_NAMES,
    api_key_create,
    api_key_for_user,
    api_key_revoke,
    api_keys_for_user,
)
from accounts.models import APIKey
from exchange.api_views import ERROR
from exchange.pagination import PAGE_PARAMETERS, CursorPage, page_of
from exchange.query_params import PAGE_QUERY, KnownQueryParameters
from exchange.serializers import RequestBodySerializer, TextOnly, refuse_unknown_fields


class ApiKeySerializer(serializers.ModelSerializer):
    api_key = serializers.CharField(source="key", help_text="the public key id (X-API-KEY)")
    permissions = serializers.ListField(child=serializers.ChoiceField(PERMISSION_NAMES))
    status = serializers.SerializerMethodField()

    class Meta:
        model = APIKey
        fields = [
            "id",
            "api_key",
            "label",
            "permissions",
            "ip_allowlist",
            "status",
            "created_at",
            "revoked_at",
            "last_used_at",
            "last_used_ip",
        ]
        read_only_fields = fields

    def get_status(self, api_key: APIKey) -> str:
        return "active" if api_key.is_active else "revoked"


class ApiKeyCreatedSerializer(ApiKeySerializer):
    secret = serializers.CharField(help_text="shown once, never again: store it now")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "secret"]
        read_only_fields = fields


class ApiKeyCreateSerializer(RequestBodySerializer):
    label = TextOnly(max_length=100)
    permissions = serializers.ListField(
        child=serializers.ChoiceField(PERMISSION_NAMES),
        required=False,
        help_text='default ["read"]',
    )
    ip_allowlist = serializers.ListField(
        child=TextOnly(max_length=49),
        required=False,
        help_text="IP addresses or CIDR networks; empty or absent: any address",
    )

    def to_internal_value(self, data):
        # A misspelt field had been dropped: "ip_whitelist" made a key usable from anywhere.
        refuse_unknown_fields(self, data)
        return super().to_internal_value(data)


class KeyManagementView(KnownQueryParameters, APIView):
    """Changes (POST, DELETE) need the web session; reads accept an API key with `read`."""

    query_parameters = {"GET": (), "POST": (), "DELETE": ()}

    def get_permissions(self):
        permissions = super().get_permissions()
        method = self.request.method.lower()
        # Only for a change the view makes: a key's PUT or PATCH had been told to sign in to the
        # web session (and audited as a denial), where the session gets 405, as the key now does.
        if self.request.method not in SAFE_METHODS and hasattr(self, method):
            permissions.insert(0, WebSessionOnly())
        return permissions


class ApiKeysView(KeyManagementView):
    query_parameters = {"GET": PAGE_QUERY, "POST": ()}

    @extend_schema(
        operation_id="api_keys_list",
        parameters=PAGE_PARAMETERS,
        responses={200: page_of(ApiKeySerializer)},
    )
    def get(self, request: Request) -> Response:
        paginator = CursorPage()
        page = paginator.paginate_queryset(api_keys_for_user(user=request.user), request, view=self)
        return paginator.get_paginated_response(ApiKeySerializer(page, many=True).data)

    @extend_schema(
        operation_id="api_key_create",
        request=ApiKeyCreateSerializer,
        responses={201: ApiKeyCreatedSerializer, 400: ERROR, 403: ERROR},
        description="Web session only. The response is the only place the secret appears.",
    )
    def post(self, request: Request) -> Response:
        serializer = ApiKeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        created = api_key_create(user=request.user, request=request, **serializer.validated_data)
        body = ApiKeySerializer(created.api_key).data | {"secret": created.secret}
        return Response(body, status=status.HTTP_201_CREATED)


class ApiKeyDetailView(KeyManagementView):
    @extend_schema(operation_id="api_key_read", responses={200: ApiKeySerializer, 404: ERROR})
    def get(self, request: Request, api_key_id: int) -> Response:
        api_key = api_key_for_user(user=request.user, api_key_id=api_key_id)
        return Response(ApiKeySerializer(api_key).data)

    @extend_schema(
        operation_id="api_key_revoke",
        responses={200: ApiKeySerializer, 403: ERROR, 404: ERROR},
        description="Web session only. Revoking is final; revoking a revoked key is a no-op.",
    )
    def delete(self, request: Request, api_key_id: int) -> Response:
        api_key = api_key_for_user(user=request.user, api_key_id=api_key_id)
        revoked = api_key_revoke(api_key=api_key, actor=request.user, request=request)
        return Response(ApiKeySerializer(revoked).data)

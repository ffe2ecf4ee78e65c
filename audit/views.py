"""The compliance query API: thin views over audit.selectors, for compliance staff only."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, generics
from rest_framework.permissions import BasePermission

from accounts.api_key_auth import ApiKeyPermission
from audit.selectors import (
    audit_records_for_order,
    audit_records_for_trade,
    audit_records_for_user,
)
from audit.serializers import AuditRecordSerializer, UserActivityQuery
from exchange.pagination import CursorPage
from exchange.query_params import PAGE_QUERY, KnownQueryParameters, time_range_check

VIEW_PERMISSION = "audit.view_audit_trail"


class IsComplianceStaff(BasePermission):
    """Staff holding `audit.view_audit_trail` only, as in the admin; anyone else (signed in or
    not) gets a 404, so the API's existence is not revealed. (A member of the group without
    the staff flag had read the whole trail with a password alone: the second factor is asked
    of staff.)"""

    def has_permission(self, request, view) -> bool:
        user = request.user
        if getattr(user, "is_staff", False) and user.has_perm(VIEW_PERMISSION):
            return True
        raise exceptions.NotFound()


class AuditCursorPage(CursorPage):
    """Oldest first by sequence number, so a history reads in order."""

    ordering = "seq"


class _AuditListView(KnownQueryParameters, generics.ListAPIView):
    serializer_class = AuditRecordSerializer
    # An API key of compliance staff needs `read` too (accounts.api_key_auth).
    permission_classes = [IsComplianceStaff, ApiKeyPermission]
    pagination_class = AuditCursorPage
    query_parameters = {"GET": PAGE_QUERY}


class OrderHistoryView(_AuditListView):
    """Every audit record of one order, oldest first."""

    @extend_schema(operation_id="audit_order_history", tags=["audit"])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        return audit_records_for_order(order_id=self.kwargs["order_id"])


class TradeRecordsView(_AuditListView):
    """Every audit record of one trade (execution and fees), oldest first."""

    @extend_schema(operation_id="audit_trade_records", tags=["audit"])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        return audit_records_for_trade(trade_id=self.kwargs["trade_id"])


class UserActivityView(_AuditListView):
    """A user's activity (as actor or subject) within an optional [start, end] window."""

    query_parameters = {"GET": ("start", "end", *PAGE_QUERY)}

    @extend_schema(
        operation_id="audit_user_activity",
        tags=["audit"],
        parameters=[
            OpenApiParameter("start", str, description="ISO 8601, inclusive (UTC if no zone)"),
            OpenApiParameter("end", str, description="ISO 8601, inclusive (UTC if no zone)"),
        ],
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        query = UserActivityQuery(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        start, end = query.validated_data.get("start"), query.validated_data.get("end")
        time_range_check(start, end)
        return audit_records_for_user(user_id=self.kwargs["user_id"], start_ns=start, end_ns=end)

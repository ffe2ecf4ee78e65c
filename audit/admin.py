"""The compliance admin: a read-only view of the trail, filters, order history, sealer lag."""

from __future__ import annotations

import json
import time

from django.contrib import admin
from django.db.models import Q
from django.http import Http404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from audit.chain import iso_ns
from audit.models import NS_PER_SECOND, AuditRecord
from audit.selectors import audit_records_for_order, audit_records_with_seal_hash, audit_seal_lag
from exchange.admin import IdSearchAdmin, TableEstimatePaginator

VIEW_PERMISSION = "audit.view_audit_trail"


class InputFilter(admin.SimpleListFilter):
    """A free-text filter (a box instead of a list of choices)."""

    template = "admin/audit/input_filter.html"

    def lookups(self, request, model_admin):
        return ((None, None),)  # needed for the filter to be shown

    def choices(self, changelist):
        query = changelist.get_filters_params()
        query.pop(self.parameter_name, None)
        yield {"get_query": query, "value": self.value() or ""}

    def typed(self) -> str:
        """The box's value without the spaces around it (a pasted " 42")."""
        return (self.value() or "").strip()


def _typed_id(value: str) -> int | None:
    """An id typed in a filter box; None when it is not ASCII digits ("²" is a digit to
    str.isdigit only). Such a value filters out everything, as the search does: it had been
    ignored, so " 42" or "alice" listed the whole trail under a filter that seemed to apply."""
    return int(value) if value.isascii() and value.isdigit() else None


class UserFilter(InputFilter):
    title = "user id (actor or subject)"
    parameter_name = "user"

    def queryset(self, request, queryset):
        value = self.typed()
        if not value:
            return queryset
        user_id = _typed_id(value)
        if user_id is None:
            return queryset.none()
        return queryset.filter(Q(user_id=user_id) | Q(actor_id=user_id))


class SymbolFilter(InputFilter):
    title = "symbol"
    parameter_name = "symbol"

    def queryset(self, request, queryset):
        value = self.typed()
        return queryset.filter(symbol=value.upper()) if value else queryset


class OrderFilter(InputFilter):
    title = "order id"
    parameter_name = "order"

    def queryset(self, request, queryset):
        value = self.typed()
        if not value:
            return queryset
        order_id = _typed_id(value)
        return queryset.none() if order_id is None else queryset.filter(order_id=order_id)


class TimeFilter(admin.SimpleListFilter):
    title = "time"
    parameter_name = "within"
    _WINDOWS = {"1h": 3600, "24h": 86_400, "7d": 7 * 86_400, "30d": 30 * 86_400}

    def lookups(self, request, model_admin):
        return [
            ("1h", "Last hour"),
            ("24h", "Last 24 hours"),
            ("7d", "Last 7 days"),
            ("30d", "Last 30 days"),
        ]

    def queryset(self, request, queryset):
        seconds = self._WINDOWS.get(self.value() or "")
        if seconds is None:
            return queryset
        return queryset.filter(ts_ns__gte=time.time_ns() - seconds * NS_PER_SECOND)


@admin.register(AuditRecord)
class AuditRecordAdmin(IdSearchAdmin):
    """Read-only for holders of audit.view_audit_trail; nobody can add, change or delete. Its
    search takes ids only (every search field is an integer): any other term finds nothing."""

    list_display = [
        "seq",
        "timestamp",
        "event_type",
        "actor_label",
        "user_id",
        "order_link",
        "trade_id",
        "symbol",
        "channel",
        "sealed",
    ]
    list_filter = ["event_type", "channel", TimeFilter, UserFilter, SymbolFilter, OrderFilter]
    search_fields = ["=order_id", "=trade_id", "=user_id", "=actor_id"]
    search_help_text = "Exact order, trade or user id."
    ordering = ["-seq"]
    show_full_result_count = False
    paginator = TableEstimatePaginator
    list_per_page = 100
    actions = None
    readonly_fields = ["timestamp", "seal_hash_hex"]
    fields = [
        "seq",
        "timestamp",
        "ts_ns",
        "event_type",
        "actor_id",
        "actor_label",
        "user_id",
        "order_id",
        "trade_id",
        "symbol",
        "shard",
        "payload",
        "channel",
        "ip",
        "session_hash",
        "api_key_id",
        "api_version",
        "seal_hash_hex",
    ]

    def get_queryset(self, request):
        return audit_records_with_seal_hash(super().get_queryset(request))

    # Read-only, for compliance only.
    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.is_active and request.user.has_perm(VIEW_PERMISSION)

    def has_module_permission(self, request) -> bool:
        return self.has_view_permission(request)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="time (UTC)", ordering="seq")
    def timestamp(self, record: AuditRecord) -> str:
        return iso_ns(record.ts_ns)

    @admin.display(description="order")
    def order_link(self, record: AuditRecord):
        if record.order_id is None:
            return "-"
        url = reverse("admin:audit_auditrecord_order_history", args=[record.order_id])
        return format_html('<a href="{}">{}</a>', url, record.order_id)

    @admin.display(boolean=True)
    def sealed(self, record: AuditRecord) -> bool:
        return getattr(record, "seal_hash", None) is not None

    @admin.display(description="seal hash")
    def seal_hash_hex(self, record: AuditRecord) -> str:
        value = getattr(record, "seal_hash", None)
        return bytes(value).hex() if value is not None else "(not sealed yet)"

    def get_urls(self):
        custom = [
            path(
                "order-history/<int:order_id>/",
                self.admin_site.admin_view(self.order_history_view),
                name="audit_auditrecord_order_history",
            )
        ]
        return custom + super().get_urls()

    def order_history_view(self, request, order_id: int):
        """An order's whole history on one page, oldest first."""
        if not self.has_view_permission(request):
            raise Http404
        records = list(audit_records_for_order(order_id=order_id))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"Audit history of order {order_id}",
            "order_id": order_id,
            # Payloads as JSON (the template had shown Python's repr of each dict).
            "records": [
                (
                    r,
                    iso_ns(r.ts_ns),
                    r.seal_hash is not None,
                    json.dumps(r.payload, ensure_ascii=False),
                )
                for r in records
            ],
        }
        return TemplateResponse(request, "admin/audit/order_history.html", context)

    def changelist_view(self, request, extra_context=None):
        lag = audit_seal_lag()
        extra_context = {**(extra_context or {}), "seal_lag": lag}
        return super().changelist_view(request, extra_context=extra_context)

"""Reading the audit trail: querysets for the API and the admin, and the sealer's lag."""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.db import connection
from django.db.models import OuterRef, Q, QuerySet, Subquery

from audit.models import AuditRecord, AuditSeal


def audit_records_with_seal_hash(queryset: QuerySet[AuditRecord]) -> QuerySet[AuditRecord]:
    """The records annotated with `seal_hash` (their chain hash; None until sealed)."""
    seal = AuditSeal.objects.filter(seq=OuterRef("seq"), day=OuterRef("day")).values("hash")[:1]
    return queryset.annotate(seal_hash=Subquery(seal))


def audit_records_for_order(*, order_id: int) -> QuerySet[AuditRecord]:
    """An order's whole history (submitted, amended, triggered, filled, cancelled...)."""
    return audit_records_with_seal_hash(AuditRecord.objects.filter(order_id=order_id)).order_by(
        "seq"
    )


def audit_records_for_trade(*, trade_id: int) -> QuerySet[AuditRecord]:
    """Every record about one trade (the execution, its fees)."""
    return audit_records_with_seal_hash(AuditRecord.objects.filter(trade_id=trade_id)).order_by(
        "seq"
    )


def audit_records_for_user(
    *, user_id: int, start_ns: int | None = None, end_ns: int | None = None
) -> QuerySet[AuditRecord]:
    """What a user did or had done to them (as actor or as subject), optionally in
    [start_ns, end_ns]."""
    queryset = AuditRecord.objects.filter(Q(user_id=user_id) | Q(actor_id=user_id))
    if start_ns is not None:
        queryset = queryset.filter(ts_ns__gte=start_ns)
    if end_ns is not None:
        queryset = queryset.filter(ts_ns__lte=end_ns)
    return audit_records_with_seal_hash(queryset).order_by("seq")


@dataclass(frozen=True, slots=True)
class SealLag:
    """How far the sealer is behind: unsealed records and the age of the oldest one."""

    last_sealed_seq: int | None
    unsealed: int
    oldest_unsealed_age_s: float | None


def audit_seal_lag(*, now_ns: int | None = None) -> SealLag:
    """The sealer's lag, for the admin and monitoring."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    with connection.cursor() as cursor:
        cursor.execute("SELECT seq FROM audit_seal ORDER BY seq DESC LIMIT 1")
        row = cursor.fetchone()
        last = row[0] if row else None
        cursor.execute("SELECT count(*), min(ts_ns) FROM audit_record WHERE seq > %s", [last or 0])
        count, oldest = cursor.fetchone()
    age = None if oldest is None else max(0.0, (now_ns - oldest) / 1e9)
    return SealLag(last_sealed_seq=last, unsealed=count, oldest_unsealed_age_s=age)

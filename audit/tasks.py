"""Celery tasks of the audit trail: thin adapters over the services."""

import datetime as dt
from pathlib import Path

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from audit.archive import (
    ExportNotReady,
    audit_export_day,
    audit_partitions_ensure,
    audit_retention_apply,
)
from audit.sealer import audit_seal


@shared_task(ignore_result=True)
def audit_seal_task() -> int:
    """Every second: seal what is safe to seal (skips if another sealer runs)."""
    return audit_seal().sealed


@shared_task(ignore_result=True)
def audit_partitions_task() -> list[str]:
    """Daily (and on demand): create today's and the next days' partitions."""
    failed = audit_partitions_ensure(
        today=timezone.now().date(), days_ahead=settings.AUDIT_PARTITION_DAYS_AHEAD
    )
    return [day.isoformat() for day in failed]


@shared_task(ignore_result=True, bind=True, max_retries=12, default_retry_delay=300)
def audit_export_task(self, day: str | None = None) -> str:
    """Daily: export yesterday (or `day`, ISO date) once it is fully sealed."""
    export_day = dt.date.fromisoformat(day) if day else timezone.now().date() - dt.timedelta(1)
    try:
        export = audit_export_day(day=export_day, export_dir=Path(settings.AUDIT_EXPORT_DIR))
    except ExportNotReady as exc:
        raise self.retry(exc=exc) from exc
    return export.path


@shared_task(ignore_result=True)
def audit_retention_task() -> list[str]:
    """Daily: drop partitions older than AUDIT_RETENTION_DAYS that are exported and sealed."""
    dropped = audit_retention_apply(
        today=timezone.now().date(), retention_days=settings.AUDIT_RETENTION_DAYS
    )
    return [day.isoformat() for day in dropped]

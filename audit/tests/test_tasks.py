"""The audit's Celery tasks are scheduled in beat and do their work."""

import datetime as dt

import pytest
from django.conf import settings
from django.db import transaction

from audit.archive import audit_partition_days
from audit.events import AuditEvent
from audit.models import AuditSeal
from audit.services import audit_record
from audit.tasks import audit_partitions_task, audit_seal_task
from exchange.celery import app


def test_every_audit_beat_entry_names_a_registered_task_and_the_sealer_runs_every_second():
    app.loader.import_default_modules()
    entries = {k: v for k, v in settings.CELERY_BEAT_SCHEDULE.items() if k.startswith("audit-")}
    assert set(entries) == {"audit-seal", "audit-partitions", "audit-export", "audit-retention"}
    for entry in entries.values():
        assert entry["task"] in app.tasks
    assert entries["audit-seal"]["schedule"] == 1.0


@pytest.mark.django_db(transaction=True)
def test_seal_task_seals_a_committed_record():
    with transaction.atomic():
        seq = audit_record(event_type=AuditEvent.LOGIN, actor="tester")
    audit_seal_task()  # takes a horizon and seals up to it in the same run
    assert AuditSeal.objects.filter(seq=seq).exists()


@pytest.mark.django_db
def test_partitions_task_creates_partitions_ahead():
    assert audit_partitions_task() == []
    today = dt.datetime.now(dt.UTC).date()
    days = audit_partition_days()
    for offset in range(settings.AUDIT_PARTITION_DAYS_AHEAD + 1):
        assert today + dt.timedelta(days=offset) in days

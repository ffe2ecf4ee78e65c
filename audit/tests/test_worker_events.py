"""The matching worker records its start (or shard takeover) and its stop.

These drive the worker's audit hooks with the lease state set by hand, so they do not depend
on the lease's SQL (exercised by matching's own tests)."""

import pytest

from audit.events import AuditEvent
from audit.models import AuditRecord
from matching.worker import ShardWorker

pytestmark = pytest.mark.django_db


def _worker(epoch: int) -> ShardWorker:
    worker = ShardWorker(shard=0)
    worker.lease.epoch = epoch
    return worker


def test_first_holder_of_a_shard_records_worker_started():
    worker = _worker(epoch=1)
    worker._audit_started()
    record = AuditRecord.objects.filter(shard=0).latest("seq")
    assert record.event_type == AuditEvent.WORKER_STARTED
    assert record.payload == {"shard": 0, "epoch": 1, "holder": worker.lease.holder}
    assert record.actor_label == f"worker:{worker.lease.holder}"


def test_a_later_holder_records_shard_takeover():
    _worker(epoch=4)._audit_started()
    record = AuditRecord.objects.filter(shard=0).latest("seq")
    assert (record.event_type, record.payload["epoch"]) == (AuditEvent.SHARD_TAKEOVER, 4)


def test_worker_stop_is_recorded_with_its_reason():
    _worker(epoch=2)._audit_stopped("lease lost")
    record = AuditRecord.objects.filter(shard=0).latest("seq")
    assert record.event_type == AuditEvent.WORKER_STOPPED
    assert record.payload["reason"] == "lease lost"

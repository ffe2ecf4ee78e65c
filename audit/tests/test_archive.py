"""Daily export (gzip JSONL + checksum) round-trips; retention drops only exported days."""

import dataclasses
import datetime as dt
import gzip
import hashlib
import json

import pytest
from django.db import connection, transaction

from audit.archive import (
    ExportNotReady,
    audit_export_day,
    audit_partition_days,
    audit_partitions_ensure,
    audit_retention_apply,
)
from audit.chain import canonical_bytes
from audit.events import AuditEvent
from audit.models import NS_PER_DAY, AuditRecord
from audit.sealer import audit_seal_all
from audit.services import AuditEntry, audit_record_many
from audit.verify import audit_chain_verify

pytestmark = pytest.mark.django_db(transaction=True)

OLD_DAY = dt.date(2001, 2, 3)


def _ns(day: dt.date, seconds: int) -> int:
    return (day - dt.date(1970, 1, 1)).days * NS_PER_DAY + seconds * 10**9 + 123_456_789


def test_export_round_trips_and_retention_drops_only_the_exported_day(tmp_path, marker):
    assert audit_partitions_ensure(today=OLD_DAY, days_ahead=0) == []
    with transaction.atomic():
        seqs = audit_record_many(
            records=[
                AuditEntry(
                    event_type=AuditEvent.DEPOSIT,
                    actor_label="clerk",
                    user_id=5,
                    payload={"m": marker, "amount": "10.50", "i": i},
                    ts_ns=_ns(OLD_DAY, 60 * i),
                    ip="198.51.100.7",
                )
                for i in range(4)
            ]
        )
    with pytest.raises(ExportNotReady, match="unsealed"):
        audit_export_day(day=OLD_DAY, export_dir=tmp_path)
    audit_seal_all()
    with pytest.raises(ExportNotReady, match="not over"):
        audit_export_day(day=dt.date.today() + dt.timedelta(days=1), export_dir=tmp_path)

    export = audit_export_day(day=OLD_DAY, export_dir=tmp_path)

    path = tmp_path / "audit-2001-02-03.jsonl.gz"
    checksum = (tmp_path / "audit-2001-02-03.jsonl.gz.sha256").read_text().split()
    assert checksum == [hashlib.sha256(path.read_bytes()).hexdigest(), path.name]
    assert export.sha256 == checksum[0] and export.record_count == 4
    with gzip.open(path, "rt", encoding="utf-8") as lines_file:
        lines = [json.loads(line) for line in lines_file]
    assert [line["seq"] for line in lines] == seqs
    first = lines[0]
    assert first["ts"] == "2001-02-03T00:00:00.123456789Z"
    assert first["ts_ns"] == _ns(OLD_DAY, 0)
    assert first["payload"] == {"m": marker, "amount": "10.50", "i": 0}
    assert first["subjects"]["user_id"] == 5 and first["ip"] == "198.51.100.7"
    assert first["event_type"] == "funds.deposit" and first["actor"]["label"] == "clerk"
    for line in lines:  # offline re-verification, from the file alone
        content = {
            k: v for k, v in line.items() if k not in {"ts", "hash", "prev_seq", "prev_hash"}
        }
        digest = hashlib.sha256(bytes.fromhex(line["prev_hash"]) + canonical_bytes(content))
        assert digest.hexdigest() == line["hash"]

    today = dt.date.today()
    assert audit_retention_apply(today=today, retention_days=30) == [OLD_DAY]
    assert OLD_DAY not in audit_partition_days()
    assert not AuditRecord.objects.filter(seq__in=seqs).exists()
    assert today in audit_partition_days()  # recent days are kept
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM audit_retention_drop WHERE day = %s", [OLD_DAY])
        assert cursor.fetchone() == (1,)
    # The chain still verifies: the gap is anchored on the recorded drop.
    audit_record_many(records=[AuditEntry(event_type=AuditEvent.LOGIN, payload={"m": marker})])
    audit_seal_all()
    assert audit_chain_verify().ok


def test_retention_keeps_a_day_that_was_never_exported(marker):
    day = dt.date(2001, 3, 4)
    audit_partitions_ensure(today=day, days_ahead=0)
    audit_record_many(records=[AuditEntry(event_type=AuditEvent.LOGIN, ts_ns=_ns(day, 5))])
    audit_seal_all()
    assert day not in audit_retention_apply(today=dt.date.today(), retention_days=30)
    assert day in audit_partition_days()


def test_a_forged_retention_drop_does_not_hide_records_deleted_from_the_chain(marker):
    # Deleting a record and its seal (triggers off) broke the chain, but one plain INSERT of a
    # retention drop over the hole made audit_verify report the chain ok again.
    with transaction.atomic():
        seqs = audit_record_many(
            records=[
                AuditEntry(event_type=AuditEvent.LOGIN, actor_label="x", payload={"m": marker})
                for _ in range(3)
            ]
        )
    audit_seal_all()
    assert audit_chain_verify().ok
    hole = seqs[1]
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
        try:
            cursor.execute("DELETE FROM audit_record WHERE seq = %s", [hole])
            cursor.execute("DELETE FROM audit_seal WHERE seq = %s", [hole])
        finally:
            cursor.execute("SET session_replication_role = origin")
        cursor.execute(
            "INSERT INTO audit_retention_drop (day, first_seq, last_seq, record_count, "
            "export_sha256, dropped_ns) VALUES ('2000-01-01', %s, %s, 1, %s, 0)",
            [hole, hole, "0" * 64],
        )
    try:
        result = audit_chain_verify()
        assert not result.ok and result.bad_seq == seqs[2]
        assert "link broken" in result.reason and "no retention" not in result.reason
    finally:
        # The tables outlive the test (append-only): leave a chain that ends whole at seqs[0].
        with connection.cursor() as cursor:
            cursor.execute("SET session_replication_role = replica")
            try:
                cursor.execute("DELETE FROM audit_record WHERE seq = %s", [seqs[2]])
                cursor.execute("DELETE FROM audit_seal WHERE seq = %s", [seqs[2]])
                cursor.execute("DELETE FROM audit_retention_drop WHERE first_seq = %s", [hole])
            finally:
                cursor.execute("SET session_replication_role = origin")
    assert audit_chain_verify().ok


def test_a_record_of_a_day_committed_after_its_export_is_exported_before_the_day_is_dropped(
    tmp_path, marker
):
    # A transaction open across the day's end committed a record of it after the export: the
    # drop took the record with the partition, in no file.
    day = dt.date(2001, 4, 5)
    audit_partitions_ensure(today=day, days_ahead=0)
    entry = AuditEntry(event_type=AuditEvent.LOGIN, payload={"m": marker}, ts_ns=_ns(day, 5))
    audit_record_many(records=[entry])
    audit_seal_all()
    assert audit_export_day(day=day, export_dir=tmp_path).record_count == 1
    late = audit_record_many(records=[dataclasses.replace(entry, ts_ns=_ns(day, 86_000))])
    audit_seal_all()
    assert audit_retention_apply(today=dt.date.today(), retention_days=30) == [day]
    with gzip.open(tmp_path / "audit-2001-04-05.jsonl.gz", "rt", encoding="utf-8") as lines:
        assert [json.loads(line)["seq"] for line in lines][-1] == late[0]
    with connection.cursor() as cursor:
        cursor.execute("SELECT record_count FROM audit_retention_drop WHERE day = %s", [day])
        assert cursor.fetchone() == (2,)


def test_a_day_is_not_exported_while_a_transaction_begun_before_its_end_may_add_to_it(
    tmp_path, marker
):
    import psycopg

    from matching.lease import database_conninfo

    audit_record_many(records=[AuditEntry(event_type=AuditEvent.LOGIN, payload={"m": marker})])
    audit_seal_all()
    today = dt.date.today()
    tomorrow_ns = _ns(today + dt.timedelta(days=1), 3600)
    with psycopg.connect(database_conninfo()) as writer:  # a transaction, written in, left open
        writer.execute("SELECT txid_current()")
        with pytest.raises(ExportNotReady, match="1 transaction"):
            audit_export_day(day=today, export_dir=tmp_path, now_ns=tomorrow_ns)
        writer.rollback()
    assert audit_export_day(day=today, export_dir=tmp_path, now_ns=tomorrow_ns).record_count

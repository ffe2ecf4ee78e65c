"""audit_record and audit_record_many: same transaction as the caller, request context."""

import datetime as dt

import pytest
from django.db import connection, transaction
from django.test import RequestFactory

from audit.events import AuditChannel, AuditEvent
from audit.models import NS_PER_DAY, AuditRecord
from audit.services import (
    AuditEntry,
    audit_entry,
    audit_record,
    audit_record_copy,
    audit_record_many,
    audit_rows,
    audit_rows_copy,
    day_of,
    session_hash,
)


class _Rollback(Exception):
    pass


@pytest.mark.django_db(transaction=True)
def test_record_written_in_a_rolled_back_transaction_does_not_exist(marker):
    with pytest.raises(_Rollback), transaction.atomic():
        seq = audit_record(event_type=AuditEvent.LOGIN, actor="tester", payload={"m": marker})
        assert AuditRecord.objects.filter(seq=seq).exists()
        raise _Rollback
    assert not AuditRecord.objects.filter(seq=seq).exists()
    assert not AuditRecord.objects.filter(payload__m=marker).exists()


@pytest.mark.django_db(transaction=True)
def test_record_written_in_a_committed_transaction_exists_with_nanosecond_time(marker):
    with transaction.atomic():
        seq = audit_record(
            event_type=AuditEvent.ORDER_SUBMITTED,
            actor="tester",
            order_id=7,
            symbol="BTC-USD",
            payload={"m": marker, "price": "150.45"},
        )
    record = AuditRecord.objects.get(seq=seq)
    assert record.order_id == 7 and record.payload == {"m": marker, "price": "150.45"}
    assert record.ts_ns > 1_700_000_000 * 10**9
    assert record.channel == AuditChannel.SYSTEM


@pytest.mark.django_db
def test_request_context_records_hashed_session_ip_version_and_channel(make_user):
    user = make_user()
    request = RequestFactory().get("/api/v1/orders", REMOTE_ADDR="203.0.113.9")
    request.user = user
    request.session = type("S", (), {"session_key": "rawsessionkey123"})()
    request.api_key_id = 42
    seq = audit_record(event_type=AuditEvent.LOGIN, actor=user, user_id=user.pk, request=request)
    record = AuditRecord.objects.get(seq=seq)
    assert record.session_hash == session_hash("rawsessionkey123")
    assert "rawsessionkey123" not in record.session_hash
    assert (record.ip, record.api_key_id, record.api_version) == ("203.0.113.9", 42, "v1")
    assert record.channel == AuditChannel.REST
    assert (record.actor_id, record.actor_label) == (user.pk, user.username)


@pytest.mark.django_db
def test_bulk_insert_returns_increasing_sequence_numbers_in_the_given_order(marker):
    entries = [
        AuditEntry(event_type=AuditEvent.TRADE_EXECUTED, trade_id=i, payload={"m": marker})
        for i in range(500)
    ]
    seqs = audit_record_many(records=entries)
    assert seqs == sorted(seqs) and len(set(seqs)) == 500
    by_seq = dict(AuditRecord.objects.filter(payload__m=marker).values_list("seq", "trade_id"))
    assert [by_seq[s] for s in seqs] == list(range(500))


@pytest.mark.django_db(transaction=True)
def test_copy_insert_fires_the_stamp_trigger_in_the_callers_transaction(marker):
    entries = [
        AuditEntry(
            event_type=AuditEvent.TRADE_EXECUTED, trade_id=i, symbol="CP-1", payload={"m": marker}
        )
        for i in range(300)
    ]
    with transaction.atomic():
        assert audit_record_copy(records=entries) == 300
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_current_xact_id()::text")
            txid = cursor.fetchone()[0]
    rows = list(
        AuditRecord.objects.filter(payload__m=marker).order_by("seq").values("seq", "trade_id")
    )
    assert [r["trade_id"] for r in rows] == list(range(300)), "seq drawn in the order given"
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(DISTINCT txid), min(txid::text) FROM audit_record "
            "WHERE payload->>'m' = %s",
            [marker],
        )
        assert cursor.fetchone() == (300, 1, txid)
    with pytest.raises(_Rollback), transaction.atomic():
        audit_record_copy(records=[AuditEntry(event_type=AuditEvent.LOGIN, payload={"r": marker})])
        raise _Rollback
    assert not AuditRecord.objects.filter(payload__r=marker).exists()


@pytest.mark.django_db
def test_copy_insert_refuses_an_unknown_event_type():
    with pytest.raises(ValueError, match="unknown audit event"):
        audit_record_copy(records=[AuditEntry(event_type="order.teleported")])


@pytest.mark.django_db
def test_unknown_event_type_is_refused():
    with pytest.raises(ValueError, match="unknown audit event"):
        audit_record(event_type="order.teleported")


def test_day_of_gives_the_utc_day_of_a_nanosecond_timestamp():
    assert day_of(0) == dt.date(1970, 1, 1)
    assert day_of(NS_PER_DAY - 1) == dt.date(1970, 1, 1)
    assert day_of(NS_PER_DAY) == dt.date(1970, 1, 2)
    noon = int(dt.datetime(2026, 11, 26, 12, tzinfo=dt.UTC).timestamp()) * 1_000_000_000
    assert day_of(noon) == day_of(noon + 1) == dt.date(2026, 11, 26)  # the second from the cache
    assert day_of(noon + NS_PER_DAY // 2) == dt.date(2026, 11, 27)


@pytest.mark.django_db(transaction=True)
def test_a_connection_dropped_during_the_copy_is_an_outage_the_api_answers_503():
    # The raw psycopg error (AdminShutdown) had passed as no database error of Django's: an
    # order entry batch whose connection was cut during its audit COPY was answered 500.
    import psycopg
    from django.db import OperationalError

    from exchange.api_errors import database_unavailable

    rows = audit_rows(records=[audit_entry(event_type=AuditEvent.LOGIN)])
    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    params = connection.get_connection_params()
    with psycopg.connect(
        dbname=connection.settings_dict["NAME"],
        **{k: params[k] for k in ("host", "port", "user") if params.get(k)},
        autocommit=True,
    ) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    with pytest.raises(OperationalError) as dropped, transaction.atomic():
        audit_rows_copy(rows=rows)
    assert database_unavailable(dropped.value)
    connection.close()


def test_a_decimal_in_a_payload_is_written_in_fixed_point():
    # An instrument listed with tick size 0.00000001 was recorded as "1E-8".
    from decimal import Decimal

    from audit.services import _payload_json

    assert _payload_json({"tick_size": Decimal("1E-8"), "at": [Decimal("8.5E-7")]}) == (
        '{"tick_size":"0.00000001","at":["0.00000085"]}'
    )

"""The database itself refuses to change or remove audit rows."""

import pytest
from django.db import DatabaseError, connection, transaction

from audit.events import AuditEvent
from audit.services import audit_record

pytestmark = pytest.mark.django_db


def _refused(sql: str, params=None) -> str:
    with pytest.raises(DatabaseError) as excinfo, transaction.atomic(), connection.cursor() as c:
        c.execute(sql, params)
    return str(excinfo.value)


def test_record_cannot_be_updated():
    seq = audit_record(event_type=AuditEvent.LOGIN, actor="tester")
    message = _refused("UPDATE audit_record SET actor_label = 'mallory' WHERE seq = %s", [seq])
    assert "append-only" in message
    with connection.cursor() as cursor:
        cursor.execute("SELECT actor_label FROM audit_record WHERE seq = %s", [seq])
        assert cursor.fetchone() == ("tester",)


def test_record_cannot_be_deleted():
    seq = audit_record(event_type=AuditEvent.LOGIN, actor="tester")
    assert "append-only" in _refused("DELETE FROM audit_record WHERE seq = %s", [seq])
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM audit_record WHERE seq = %s", [seq])
        assert cursor.fetchone() == (1,)


def test_record_table_and_its_partitions_cannot_be_truncated():
    seq = audit_record(event_type=AuditEvent.LOGIN, actor="tester")
    assert "append-only" in _refused("TRUNCATE audit_record")
    with connection.cursor() as cursor:
        cursor.execute("SELECT tableoid::regclass::text FROM audit_record WHERE seq = %s", [seq])
        partition = cursor.fetchone()[0]
    assert "append-only" in _refused(f'TRUNCATE "{partition}"')
    assert "append-only" in _refused("TRUNCATE audit_record_default")


def test_seals_cannot_be_updated_deleted_or_truncated():
    with connection.cursor() as cursor:  # a seal row to aim at (rolled back with the test)
        cursor.execute(
            "INSERT INTO audit_seal (seq, day, prev_hash, hash, sealed_ns) "
            "VALUES (-1, current_date, '\\x00', '\\x00', 0)"
        )
    assert "append-only" in _refused("UPDATE audit_seal SET prev_seq = 0")
    assert "append-only" in _refused("DELETE FROM audit_seal")
    assert "append-only" in _refused("TRUNCATE audit_seal")


def test_insert_trigger_overrides_a_forged_sequence_number():
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audit_record (seq, day, ts_ns, event_type, channel) "
            "VALUES (1, current_date, 0, 'auth.login', 'system') RETURNING seq"
        )
        assert cursor.fetchone()[0] != 1


def test_compliance_group_holds_the_view_permission_after_migrate():
    from django.contrib.auth.models import Group

    group = Group.objects.get(name="compliance")
    assert group.permissions.filter(codename="view_audit_trail").exists()

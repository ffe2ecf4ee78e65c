"""The sealer: one gap-free chain under concurrent writers; tampering is named by seq."""

import itertools
import threading

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections, transaction

from audit.events import AuditEvent
from audit.models import AuditRecord, AuditSeal
from audit.sealer import audit_seal, audit_seal_all, last_seal, seal_horizon_take
from audit.services import AuditEntry, audit_record, audit_record_many
from audit.verify import audit_chain_verify

pytestmark = pytest.mark.django_db(transaction=True)


class _Rollback(Exception):
    pass


def _sealed_seqs(marker: str) -> set[int]:
    seqs = set(AuditRecord.objects.filter(payload__m=marker).values_list("seq", flat=True))
    return set(AuditSeal.objects.filter(seq__in=seqs).values_list("seq", flat=True))


def test_concurrent_writers_some_rolling_back_some_held_open_seal_into_one_gap_free_chain(
    marker,
):
    committed: list[int] = []
    rolled_back: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    # Committed before the long transaction starts: sealable while it is held open.
    with transaction.atomic():
        early = audit_record_many(
            records=[AuditEntry(event_type=AuditEvent.LOGIN, payload={"m": marker})] * 5
        )
    committed.extend(early)
    seal_horizon_take()  # a sealer tick's first step, as the beat task does every second

    held_seq: list[int] = []
    held_open = threading.Event()
    release = threading.Event()

    def holder() -> None:
        try:
            with transaction.atomic():
                held_seq.append(audit_record(event_type=AuditEvent.LOGIN, payload={"m": marker}))
                held_open.set()
                release.wait(30)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    def writer(n: int) -> None:
        try:
            for k in range(15):
                entries = [
                    AuditEntry(
                        event_type=AuditEvent.TRADE_EXECUTED,
                        trade_id=n * 100 + k,
                        payload={"m": marker, "w": n, "k": k},
                    )
                    for _ in range(1 + (n + k) % 4)
                ]
                try:
                    with transaction.atomic():
                        seqs = audit_record_many(records=entries)
                        if (n + k) % 3 == 0:
                            raise _Rollback
                except _Rollback:
                    with lock:
                        rolled_back.extend(seqs)
                else:
                    with lock:
                        committed.extend(seqs)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    hold = threading.Thread(target=holder)
    hold.start()
    assert held_open.wait(10)
    writers = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in writers:
        thread.start()
    while any(thread.is_alive() for thread in writers):
        audit_seal()  # the sealer runs while writers commit and roll back
    for thread in writers:
        thread.join()
    for _ in range(3):
        audit_seal()
    try:
        assert not errors
        # While the older transaction is open: records drawn before it are sealed, nothing
        # drawn after it is (it could still commit before them).
        last_seq, _ = last_seal()
        assert last_seq is not None and last_seq < held_seq[0]
        assert set(early) <= _sealed_seqs(marker)
        assert not (_sealed_seqs(marker) & {s for s in committed if s > held_seq[0]})
    finally:
        release.set()
        hold.join()
    committed.extend(held_seq)

    audit_seal_all()
    assert _sealed_seqs(marker) == set(committed)
    assert not AuditRecord.objects.filter(seq__in=rolled_back).exists()
    assert rolled_back, "the test meant some transactions to roll back"
    # One chain: each seal links to the previous sealed record, with no seal missing.
    seals = list(AuditSeal.objects.filter(seq__in=committed).order_by("seq"))
    for prev, seal in itertools.pairwise(seals):
        assert seal.prev_seq >= prev.seq
    result = audit_chain_verify()
    assert result.ok, result


def _tamper(seq: int, label: str) -> None:
    """Change a stored record behind the triggers' back (superuser, trigger disabled)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT tableoid::regclass::text FROM audit_record WHERE seq = %s", [seq])
        partition = cursor.fetchone()[0]
        cursor.execute(f'ALTER TABLE "{partition}" DISABLE TRIGGER audit_record_append_only')
        try:
            cursor.execute("UPDATE audit_record SET actor_label = %s WHERE seq = %s", [label, seq])
        finally:
            cursor.execute(f'ALTER TABLE "{partition}" ENABLE TRIGGER audit_record_append_only')


def test_altering_one_stored_byte_makes_audit_verify_name_that_record(marker):
    with transaction.atomic():
        seqs = audit_record_many(
            records=[
                AuditEntry(
                    event_type=AuditEvent.LOGIN, actor_label="alice", payload={"m": marker, "i": i}
                )
                for i in range(5)
            ]
        )
    audit_seal_all()
    call_command("audit_verify")  # intact: no error
    target = seqs[2]
    _tamper(target, "alicf")  # one byte: e -> f
    try:
        with pytest.raises(CommandError, match=rf"seq {target}\b"):
            call_command("audit_verify")
        result = audit_chain_verify()
        assert (result.ok, result.bad_seq) == (False, target)
        assert "content" in result.reason
    finally:
        _tamper(target, "alice")
    assert audit_chain_verify().ok


def test_a_record_slipped_in_below_the_sealed_range_is_named(marker):
    with transaction.atomic():
        audit_record(event_type=AuditEvent.LOGIN, payload={"m": marker})
    audit_seal_all()
    with connection.cursor() as cursor:  # bypass the stamping trigger to forge an old seq
        cursor.execute("ALTER TABLE audit_record DISABLE TRIGGER audit_record_stamp")
        try:
            cursor.execute(
                "INSERT INTO audit_record (seq, day, ts_ns, txid, event_type, channel) "
                "VALUES (%s, current_date, 0, '1', 'auth.login', 'system')",
                [-(10**12)],
            )
        finally:
            cursor.execute("ALTER TABLE audit_record ENABLE TRIGGER audit_record_stamp")
    result = audit_chain_verify()
    assert (result.ok, result.bad_seq) == (False, -(10**12))
    assert "no seal" in result.reason
    # Later tests verify the whole chain: remove the forgery (superuser, guard off).
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tableoid::regclass::text FROM audit_record WHERE seq = %s", [-(10**12)]
        )
        partition = cursor.fetchone()[0]
        cursor.execute(f'ALTER TABLE "{partition}" DISABLE TRIGGER audit_record_append_only')
        cursor.execute("DELETE FROM audit_record WHERE seq = %s", [-(10**12)])
        cursor.execute(f'ALTER TABLE "{partition}" ENABLE TRIGGER audit_record_append_only')
    assert audit_chain_verify().ok


@pytest.mark.django_db(transaction=True)
def test_a_writer_held_open_in_another_database_does_not_hold_the_sealer_back():
    import psycopg

    settings_dict = connection.settings_dict
    other = psycopg.connect(
        dbname="postgres",
        user=settings_dict["USER"] or None,
        password=settings_dict["PASSWORD"] or None,
        host=settings_dict["HOST"] or None,
        port=settings_dict["PORT"] or None,
    )
    try:
        other.execute("SELECT pg_current_xact_id()")  # a transaction with an id, left open
        with transaction.atomic():
            seq = audit_record(event_type=AuditEvent.LOGIN, actor="tester")
        audit_seal()
        assert AuditSeal.objects.filter(seq=seq).exists()
    finally:
        other.rollback()
        other.close()


def _delete_behind_the_triggers(table: str, trigger: str, seqs: list[int]) -> None:
    """Remove rows as a superuser could: the partitions' append-only trigger off meanwhile."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT DISTINCT tableoid::regclass::text FROM {table} WHERE seq = ANY(%s)", [seqs]
        )
        for (partition,) in cursor.fetchall():
            cursor.execute(f'ALTER TABLE "{partition}" DISABLE TRIGGER {trigger}')
            try:
                cursor.execute(f'DELETE FROM "{partition}" WHERE seq = ANY(%s)', [seqs])
            finally:
                cursor.execute(f'ALTER TABLE "{partition}" ENABLE TRIGGER {trigger}')


@pytest.mark.django_db(transaction=True)
def test_newest_records_removed_with_their_seals_fail_verification_against_the_anchor(
    marker, settings, tmp_path, monkeypatch
):
    # The end of the chain has nothing after it: removing the newest records and their seals
    # left a shorter chain that verified (`ok`). The sealer now anchors its newest seal in a
    # file outside the database.
    from audit import anchor

    settings.AUDIT_EXPORT_DIR = tmp_path
    monkeypatch.setattr(anchor, "ANCHOR_EVERY_SECONDS", 0.0)
    seqs = audit_record_many(
        records=[
            AuditEntry(event_type=AuditEvent.LOGIN, payload={"m": marker, "i": i}) for i in range(4)
        ]
    )
    audit_seal_all()
    assert anchor.anchor_latest()[0] >= seqs[-1]
    assert audit_chain_verify().ok
    newest = list(
        AuditSeal.objects.filter(seq__gte=seqs[2]).order_by("seq").values_list("seq", flat=True)
    )
    _delete_behind_the_triggers("audit_seal", "audit_seal_append_only", newest)
    _delete_behind_the_triggers("audit_record", "audit_record_append_only", newest)
    result = audit_chain_verify()
    assert (result.ok, result.bad_seq) == (False, newest[-1])
    assert "removed from its end" in result.reason
    with pytest.raises(CommandError, match="anchored seal"):
        call_command("audit_verify")


@pytest.mark.django_db(transaction=True)
def test_a_seal_too_soon_after_the_last_anchor_is_anchored_on_a_later_idle_tick(
    marker, settings, tmp_path, monkeypatch
):
    # An anchor was skipped, not postponed, when it came less than 10 s after the previous one:
    # with nothing sealed afterwards, the newest records stayed unanchored and their removal
    # (seals and all) verified.
    import time as time_module

    from audit import anchor
    from audit.sealer import audit_seal

    settings.AUDIT_EXPORT_DIR = tmp_path
    monkeypatch.setattr(anchor, "_last_written", time_module.monotonic())  # just anchored
    seqs = audit_record_many(
        records=[AuditEntry(event_type=AuditEvent.LOGIN, payload={"m": marker})]
    )
    audit_seal_all()
    assert anchor.anchor_latest() is None  # too soon after the last anchor
    monkeypatch.setattr(anchor, "ANCHOR_EVERY_SECONDS", 0.0)  # as if 10 s went by, idle
    audit_seal()
    assert anchor.anchor_latest()[0] == seqs[-1]

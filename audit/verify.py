"""Re-walk the sealed chain and name the first record whose content or link does not match."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connection

from audit.anchor import anchor_latest
from audit.chain import GENESIS_HASH, RECORD_COLUMNS, link_hash, record_content
from audit.models import AuditRetentionDrop, AuditSeal

_WALK_SQL = f"""
SELECT s.seq, s.day, s.prev_seq, s.prev_hash, s.hash, r.seq IS NOT NULL,
       {
    ", ".join(
        "r." + c if not c.startswith("host(") else "host(r.ip)"
        for c in (col.strip() for col in RECORD_COLUMNS.split(","))
    )
}
  FROM audit_seal s LEFT JOIN audit_record r ON r.seq = s.seq
 WHERE s.seq > %s
 ORDER BY s.seq
 LIMIT %s
"""
_UNSEALED_INSIDE_SQL = """
SELECT r.seq FROM audit_record r
 WHERE r.seq <= %s AND NOT EXISTS (SELECT 1 FROM audit_seal s WHERE s.seq = r.seq)
 ORDER BY r.seq LIMIT 1
"""


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of a verification: ok, or the first bad sequence number and why."""

    ok: bool
    checked: int
    last_seq: int | None
    bad_seq: int | None = None
    reason: str = ""


def _dropped_by_retention() -> tuple[set, list[tuple[int, int]]]:
    """Days (and their seq ranges) whose partitions retention dropped after export."""
    drops = list(AuditRetentionDrop.objects.all())
    days = {drop.day for drop in drops}
    ranges = [(drop.first_seq, drop.last_seq) for drop in drops if drop.first_seq is not None]
    return days, ranges


def audit_chain_verify(*, batch_size: int = 20_000) -> VerifyResult:
    """Check every seal's link to its predecessor and every sealed record's hash, then that no
    record inside the sealed range lacks a seal. Stops at the first mismatch."""
    dropped_days, dropped_ranges = _dropped_by_retention()
    checked = 0
    last_seq: int | None = None
    last_hash = GENESIS_HASH
    failure: tuple[int, str] | None = None
    after = 0
    while failure is None:
        with connection.cursor() as cursor:
            cursor.execute(_WALK_SQL, [after, batch_size])
            rows = cursor.fetchall()
        if not rows:
            break
        for row in rows:
            seq, day, prev_seq, prev_hash, stored_hash, present = row[:6]
            prev_hash, stored_hash = bytes(prev_hash), bytes(stored_hash)
            if prev_seq != last_seq:
                anchored = (
                    prev_seq is not None
                    and (last_seq is None or prev_seq > last_seq)
                    and any(lo <= prev_seq <= hi for lo, hi in dropped_ranges)
                )
                if not anchored:
                    failure = (
                        seq,
                        f"link broken: seal names predecessor {prev_seq}, "
                        f"the chain's previous seal is {last_seq}",
                    )
                    break
            elif prev_hash != last_hash:
                failure = (seq, "link broken: stored previous hash differs from the chain's")
                break
            if present:
                record = row[6:]
                if record[1] != day:
                    failure = (seq, f"record day {record[1]} differs from its seal's day {day}")
                    break
                if link_hash(prev_hash, record_content(record)) != stored_hash:
                    failure = (seq, "record content does not match its seal")
                    break
            elif day not in dropped_days:
                failure = (seq, "sealed record is missing")
                break
            checked += 1
            last_seq, last_hash = seq, stored_hash
        after = rows[-1][0]
    if last_seq is not None:
        with connection.cursor() as cursor:
            cursor.execute(_UNSEALED_INSIDE_SQL, [failure[0] if failure else last_seq])
            row = cursor.fetchone()
        if row is not None and (failure is None or row[0] < failure[0]):
            failure = (row[0], "record inside the sealed range has no seal")
    if failure is None:
        failure = _anchor_check(last_seq, dropped_ranges)
    if failure is not None:
        return VerifyResult(
            ok=False, checked=checked, last_seq=last_seq, bad_seq=failure[0], reason=failure[1]
        )
    return VerifyResult(ok=True, checked=checked, last_seq=last_seq)


def _anchor_check(last_seq: int | None, dropped_ranges) -> tuple[int, str] | None:
    """The chain still holds the newest seal anchored outside the database (audit/anchor.py):
    records removed from its end, seals and all, leave it shorter than that."""
    anchored = anchor_latest()
    if anchored is None:
        return None
    seq, seal_hash = anchored
    if any(lo <= seq <= hi for lo, hi in dropped_ranges):
        return None  # retention dropped it, after export
    if last_seq is None or last_seq < seq:
        return (
            seq,
            f"the chain ends at seq {last_seq}, before its anchored seal {seq}: records were "
            "removed from its end",
        )
    stored = AuditSeal.objects.filter(seq=seq).values_list("hash", flat=True).first()
    if stored is None or bytes(stored) != seal_hash:
        return (seq, "the seal differs from its anchor outside the database")
    return None

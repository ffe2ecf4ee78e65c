"""Re-walk the sealed chain and name the first record whose content or link does not match."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import connection
from django.utils import timezone

from audit.anchor import anchor_latest
from audit.chain import GENESIS_HASH, RECORD_COLUMNS, link_hash, record_content
from audit.models import AuditExport, AuditRetentionDrop, AuditSeal

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


def _drop_unproven(seq: int, link_hash_hex: str | None) -> str | None:
    """Why the gap that ends at `seq` (a dropped day's last record, whose seal hash the next
    seal names as `link_hash_hex`; None: check the day only) is not a retention drop; None
    when it is.

    A row in audit_retention_drop alone proved nothing: anyone able to delete records could
    insert one over the hole. A real drop is of a day older than AUDIT_RETENTION_DAYS whose
    seals are all gone, and its export file outside the database (with the checksum the drop
    recorded) ends with that very record."""
    drop = AuditRetentionDrop.objects.filter(first_seq__lte=seq, last_seq__gte=seq).first()
    if drop is None:
        return f"no retention drop covers seq {seq}"
    oldest_kept = timezone.now().date() - dt.timedelta(days=settings.AUDIT_RETENTION_DAYS)
    if drop.day >= oldest_kept:
        return f"retention drop of {drop.day} is younger than the retention period"
    if AuditSeal.objects.filter(day=drop.day).exists():
        return f"retention drop of {drop.day}, but seals of that day remain"
    if link_hash_hex is None:
        return None
    if drop.last_seq != seq:
        return f"retention drop of {drop.day} ends at seq {drop.last_seq}, not {seq}"
    export = AuditExport.objects.filter(day=drop.day).first()
    path = Path(export.path) if export is not None else None
    if path is None or not path.is_file():
        return f"the export of dropped day {drop.day} is not at {path}: it proves the gap"
    if hashlib.sha256(path.read_bytes()).hexdigest() != drop.export_sha256:
        return f"the export of dropped day {drop.day} does not match the drop's checksum"
    last_line = None
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for last_line in lines:  # noqa: B007  (the last one is wanted)
            pass
    last = json.loads(last_line) if last_line else {}
    if last.get("seq") != seq or last.get("hash") != link_hash_hex:
        return f"the export of dropped day {drop.day} does not end with the record {seq}"
    return None


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
                unproven = (
                    "not a dropped day's"
                    if prev_seq is None or (last_seq is not None and prev_seq < last_seq)
                    else _drop_unproven(prev_seq, prev_hash.hex())
                )
                if unproven is not None:
                    failure = (
                        seq,
                        f"link broken: seal names predecessor {prev_seq}, "
                        f"the chain's previous seal is {last_seq} ({unproven})",
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
    if any(lo <= seq <= hi for lo, hi in dropped_ranges) and _drop_unproven(seq, None) is None:
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

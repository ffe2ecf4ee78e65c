"""Partitions, daily export and retention of the audit trail.

Export shape (one gzip-compressed JSONL file per UTC day, `audit-YYYY-MM-DD.jsonl.gz`, records
in seq order, one JSON object per line):

    {"seq": 42, "ts": "2026-11-25T14:22:12.123456789Z", "ts_ns": 1795616532123456789,
     "event_type": "auth.login", "actor": {"id": 7, "label": "alice"},
     "subjects": {"user_id": 7, "order_id": null, "trade_id": null, "symbol": null,
                  "shard": null},
     "payload": {...}, "channel": "web", "ip": "203.0.113.9", "session": "<sha256 hex>",
     "api_key_id": null, "api_version": null,
     "hash": "<hex>", "prev_seq": 41, "prev_hash": "<hex>"}

Beside it, `audit-YYYY-MM-DD.jsonl.gz.sha256` holds the file's SHA-256 in `sha256sum` format.
A line re-verifies offline: drop ts, hash, prev_seq and prev_hash, canonicalize the rest (see
audit/chain.py) and check SHA-256(bytes.fromhex(prev_hash) + canonical) == hash.

Only days that are over, with no transaction still open that began before they ended, and
completely sealed are exported. Retention drops a day's partitions (records and seals) only when
the day is older than AUDIT_RETENTION_DAYS, was exported, and has no unsealed record (a day that
holds more records than its export is exported again first); it first writes the day's seq
range and export checksum to the append-only `audit_retention_drop`, so that `audit_verify`
accepts the gap the drop leaves in the chain, anchored on the next seal's stored prev_hash.
Days that landed in the DEFAULT partition (partitions not created in time) are never dropped
automatically.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path

from django.db import connection, transaction
from django.utils import timezone

from audit.chain import RECORD_COLUMNS, iso_ns, record_content
from audit.models import AuditExport
from audit.services import day_of

logger = logging.getLogger(__name__)

_PARTITION_RE = re.compile(r"^audit_record_p(\d{8})$")


class ExportNotReady(Exception):
    """The day is not over yet, or some of its records are not sealed yet."""


def audit_partitions_ensure(*, today: dt.date, days_ahead: int = 7) -> list[dt.date]:
    """Create the daily partitions of both audit tables for today and the next days.

    Returns the days that could not be created because the DEFAULT partition already holds
    rows of them (those days stay in the default partition)."""
    failed = []
    with connection.cursor() as cursor:
        for offset in range(days_ahead + 1):
            day = today + dt.timedelta(days=offset)
            cursor.execute("SELECT audit_ensure_partition(%s)", [day])
            if not cursor.fetchone()[0]:
                failed.append(day)
                logger.warning("audit partition not created", extra={"day": day.isoformat()})
    return failed


# Sessions of this database in a transaction that has written (it holds an xid) and began before
# `%s`, and transactions prepared before it: either may still commit records of a day that ended
# meanwhile (a record's time is taken when it is made; its seq and commit come later).
_WRITERS_SINCE_SQL = """
SELECT (SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND backend_xid IS NOT NULL AND xact_start < %s)
     + (SELECT count(*) FROM pg_prepared_xacts
         WHERE database = current_database() AND prepared < %s)
"""
# A batch stamps its records before its transaction begins: a transaction begun this long after
# a day ended may still hold records of that day.
DAY_END_MARGIN = dt.timedelta(minutes=1)


def _writers_since_before(moment: dt.datetime) -> int:
    with connection.cursor() as cursor:
        cursor.execute(_WRITERS_SINCE_SQL, [moment, moment])
        return cursor.fetchone()[0]


def _record_count(day: dt.date) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM audit_record WHERE day = %s", [day])
        return cursor.fetchone()[0]


def _unsealed_count(day: dt.date) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM audit_record r WHERE r.day = %s "
            "AND NOT EXISTS (SELECT 1 FROM audit_seal s WHERE s.seq = r.seq AND s.day = r.day)",
            [day],
        )
        return cursor.fetchone()[0]


def _export_line(row: tuple) -> dict:
    record = row[:-3]
    stored_hash, prev_seq, prev_hash = row[-3:]
    content = record_content(record)
    line = {"ts": iso_ns(content["ts_ns"]), **content}
    line.update(hash=bytes(stored_hash).hex(), prev_seq=prev_seq, prev_hash=bytes(prev_hash).hex())
    return line


def audit_export_day(*, day: dt.date, export_dir: Path, now_ns: int | None = None) -> AuditExport:
    """Write the day's records as gzip JSONL plus a .sha256 file; record the export.

    Raises ExportNotReady unless the day is over (by `now_ns`, default now), no transaction
    that began before it ended (or within DAY_END_MARGIN after) and has written is still open,
    and its records are all sealed.
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    if day >= day_of(now_ns):
        raise ExportNotReady(f"{day} is not over yet")
    day_end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    writers = _writers_since_before(day_end + DAY_END_MARGIN)
    if writers:
        # Its records would have been missing from the file (and later dropped with the day's
        # partition: see audit_retention_apply).
        raise ExportNotReady(
            f"{writers} transaction(s) open since before {day} ended may still add records to it"
        )
    unsealed = _unsealed_count(day)
    if unsealed:
        raise ExportNotReady(f"{day} has {unsealed} unsealed records")
    export_dir = Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    name = f"audit-{day.isoformat()}.jsonl.gz"
    path = export_dir / name
    tmp = export_dir / f".{name}.tmp"
    count, first_seq, last_seq = 0, None, None
    sql = (
        f"SELECT {', '.join('r.' + c.strip() for c in RECORD_COLUMNS.split(','))}, "
        "s.hash, s.prev_seq, s.prev_hash FROM audit_record r "
        "JOIN audit_seal s ON s.seq = r.seq AND s.day = r.day "
        "WHERE r.day = %s ORDER BY r.seq"
    ).replace("r.host(ip)", "host(r.ip)")
    with (
        transaction.atomic(),
        connection.chunked_cursor() as cursor,
        gzip.open(tmp, "wt", encoding="utf-8") as out,
    ):
        cursor.execute(sql, [day])
        while rows := cursor.fetchmany(5_000):
            for row in rows:
                line = _export_line(row)
                out.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
                count += 1
                first_seq = line["seq"] if first_seq is None else first_seq
                last_seq = line["seq"]
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    os.replace(tmp, path)
    (export_dir / f"{name}.sha256").write_text(f"{digest}  {name}\n")
    export, _ = AuditExport.objects.update_or_create(
        day=day,
        defaults={
            "path": str(path),
            "sha256": digest,
            "record_count": count,
            "first_seq": first_seq,
            "last_seq": last_seq,
        },
    )
    logger.info("audit day exported", extra={"day": day.isoformat(), "records": count})
    return export


def audit_partition_days() -> list[dt.date]:
    """The days that have their own record partition, oldest first."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'audit_record'::regclass"
        )
        names = [row[0] for row in cursor.fetchall()]
    days = []
    for name in names:
        match = _PARTITION_RE.match(name)
        if match:
            days.append(dt.datetime.strptime(match.group(1), "%Y%m%d").date())
    return sorted(days)


def audit_retention_apply(*, today: dt.date, retention_days: int) -> list[dt.date]:
    """Drop the partitions of days older than the retention, if exported and fully sealed.

    Returns the days dropped."""
    cutoff = today - dt.timedelta(days=retention_days)
    dropped = []
    for day in audit_partition_days():
        if day >= cutoff:
            break
        export = AuditExport.objects.filter(day=day, dropped_at__isnull=True).first()
        if export is None or _unsealed_count(day) or not Path(export.path).exists():
            logger.warning(
                "audit partition kept: not exported or not sealed", extra={"day": day.isoformat()}
            )
            continue
        if _record_count(day) != export.record_count:
            # Records of the day committed after its export: the drop had taken them with it,
            # in no file. The day is exported again, whole, first.
            try:
                export = audit_export_day(day=day, export_dir=Path(export.path).parent)
            except ExportNotReady as not_ready:
                logger.warning(
                    "audit partition kept: records added since its export",
                    extra={"day": day.isoformat(), "why": str(not_ready)},
                )
                continue
        suffix = day.strftime("%Y%m%d")
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO audit_retention_drop (day, first_seq, last_seq, record_count, "
                "export_sha256, dropped_ns) VALUES (%s, %s, %s, %s, %s, %s)",
                [
                    day,
                    export.first_seq,
                    export.last_seq,
                    export.record_count,
                    export.sha256,
                    time.time_ns(),
                ],
            )
            cursor.execute(f'DROP TABLE "audit_record_p{suffix}", "audit_seal_p{suffix}"')
            export.dropped_at = timezone.now()
            export.save(update_fields=["dropped_at"])
        dropped.append(day)
        logger.info("audit partition dropped", extra={"day": day.isoformat()})
    return dropped

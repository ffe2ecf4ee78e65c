"""The sealer: hashes committed records into one gap-free chain without serializing writers.

Writers never wait for each other or for the sealer: a record is inserted unhashed, and its
insert trigger stamps it with `txid := pg_current_xact_id()` and then `seq :=
nextval('audit_record_seq')` (CACHE 1, so numbers are handed out in real-time order across
sessions). One sealer at a time (a session advisory lock) later appends, in `seq` order, one
`audit_seal` row per record: hash = SHA-256(previous hash || canonical record), see
audit/chain.py.

The danger is sealing seq 11 while the transaction holding seq 10 is still running: it could
commit after, and the chain would skip it (or have to be rewritten). Sequence numbers are
drawn before commit and commit order differs from draw order, so "every row visible now" is
not a safe bound, and neither is "rows whose xid is below the snapshot's xmin" alone (an old
transaction can draw a seq after a younger one that is still running).

Horizons. A tick first records a horizon in its own short transaction:
    1. L := the sequence's last value (read from the sequence relation, non-transactional);
    2. N := pg_current_xact_id(), a transaction id assigned *after* step 1;
    3. insert (L, N) into `audit_seal_horizon`; commit.
Claim: once no transaction of this database with an id <= N is still running (the oldest
`backend_xid` in pg_stat_activity for this database, and any prepared transaction, is > N;
transactions of other databases cannot write our records), every record with seq <= L that
will ever exist is committed and visible, and every record inserted from then on has seq > L.
    - A record with seq s <= L drew s before step 1 (the sequence is monotonic and hands out
      values in time order). Its transaction got its xid before drawing s (the trigger's
      order; an xid assigned even earlier only helps), so before step 2; xids are assigned
      from a monotonic counter, hence that xid < N.
    - "no running id <= N" means every such transaction of this database has committed
      (then its rows are visible to any snapshot taken from now on) or aborted (then its rows
      never appear). Nothing drawn later can be <= L.
    - Subtransactions are covered too: pg_current_xact_id() gives the top-level id, and a
      rolled-back savepoint's rows never become visible.
So sealing every visible record with last_sealed < seq <= L, in seq order, yields a chain
that no later commit can interleave: gap-free over committed records (aborted seqs simply
never exist; a seal stores `prev_seq`, so gaps in numbering are explicit, not silent).

A tick then (sealer lock held) takes the largest safe horizon, seals up to it in batches (one
transaction per batch: fetch a batch, hash in Python, one binary COPY of the seals) and
prunes the safe horizons it no longer needs. Horizons from earlier ticks are kept until safe,
so a transaction held open for a long time only holds back the records drawn after the last
horizon taken before it got its id (horizons are taken every tick), not the whole backlog. The
cost of the argument: any transaction with an xid (audit writer or not) that runs long delays
sealing of records drawn after it started; readers do not. With the beat task every second,
sealed records are tamper-evident and unsealed ones are at most a few seconds old (plus the
longest running write transaction).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from django.db import connection, transaction

from audit.anchor import anchor_pending, anchor_write
from audit.chain import GENESIS_HASH, RECORD_COLUMNS, link_hash, record_content

logger = logging.getLogger(__name__)

# Session advisory lock (two-int form): first key "AU", second 1 = the sealer.
SEALER_LOCK = (0x4155, 1)

_TAKE_HORIZON_SQL = """
INSERT INTO audit_seal_horizon (seq_bound, xid_bound, taken_ns) VALUES (%s, %s, %s)
"""
# The oldest transaction id (as xid8) still running *in this database*, or the snapshot's
# xmax when none is: only a transaction of this database can write audit records, so writers
# in other databases of the cluster (which a plain snapshot xmin would include) do not hold
# the sealer back. pg_stat_activity.backend_xid is read from the live process array; prepared
# (two-phase) transactions count too. A 32-bit xid is widened with the epoch of xmax.
_OLDEST_RUNNING_XID8 = """
WITH snap AS (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax),
running AS (
    SELECT backend_xid::text::bigint AS xid FROM pg_stat_activity
     WHERE datname = current_database() AND backend_xid IS NOT NULL
    UNION ALL
    SELECT transaction::text::bigint FROM pg_prepared_xacts WHERE database = current_database()
)
SELECT coalesce(min(CASE WHEN running.xid <= (snap.xmax & 4294967295)
                         THEN ((snap.xmax >> 32) << 32) + running.xid
                         ELSE (((snap.xmax >> 32) - 1) << 32) + running.xid END),
                max(snap.xmax))
  FROM snap LEFT JOIN running ON true
"""
_SAFE_HORIZON_SQL = f"""
WITH oldest AS ({_OLDEST_RUNNING_XID8})
SELECT max(seq_bound), (SELECT * FROM oldest)
  FROM audit_seal_horizon
 WHERE xid_bound < (SELECT * FROM oldest)
"""
_PRUNE_HORIZONS_SQL = f"""
WITH oldest AS ({_OLDEST_RUNNING_XID8})
DELETE FROM audit_seal_horizon WHERE seq_bound < %s AND xid_bound < (SELECT * FROM oldest)
"""
_FETCH_SQL = f"""
SELECT {RECORD_COLUMNS} FROM audit_record
 WHERE seq > %s AND seq <= %s ORDER BY seq LIMIT %s
"""
# Seals are written with one binary COPY per batch (set-based, and far cheaper to encode
# than arrays of bytea).
_COPY_SEALS_SQL = (
    "COPY audit_seal (seq, day, prev_seq, prev_hash, hash, sealed_ns) FROM STDIN (FORMAT BINARY)"
)
_SEAL_TYPES = ["int8", "date", "int8", "bytea", "bytea", "int8"]


@dataclass(frozen=True, slots=True)
class SealResult:
    """What one sealer tick did."""

    sealed: int
    last_seq: int | None
    horizon: int | None
    locked: bool


def last_seal() -> tuple[int | None, bytes]:
    """The last sealed record's (seq, hash), or (None, genesis hash) before the first seal."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT seq, hash FROM audit_seal ORDER BY seq DESC LIMIT 1")
        row = cursor.fetchone()
    if row is None:
        return None, GENESIS_HASH
    return row[0], bytes(row[1])


def seal_horizon_take() -> tuple[int, int]:
    """Record a horizon (L, N) in its own committed transaction (steps 1-3 above)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END "
            "FROM audit_record_seq"
        )
        seq_bound = cursor.fetchone()[0]
        # A separate statement, so the xid is assigned strictly after the read above.
        cursor.execute("SELECT pg_current_xact_id()::text::bigint")
        xid_bound = cursor.fetchone()[0]
        cursor.execute(_TAKE_HORIZON_SQL, [seq_bound, xid_bound, time.time_ns()])
    return seq_bound, xid_bound


def _safe_horizon() -> int | None:
    with connection.cursor() as cursor:
        cursor.execute(_SAFE_HORIZON_SQL)
        horizon, _xmin = cursor.fetchone()
    return horizon


def _prune_horizons(horizon: int) -> None:
    """Drop safe horizons below the one in use (it stays, in case later ones are not safe)."""
    with connection.cursor() as cursor:
        cursor.execute(_PRUNE_HORIZONS_SQL, [horizon])


def _seal_batch(after_seq: int | None, prev_hash: bytes, horizon: int, limit: int):
    """Seal the next batch of records after `after_seq` up to `horizon`, in one transaction.

    Returns (count, last seq, last hash)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_FETCH_SQL, [after_seq or 0, horizon, limit])
        rows = cursor.fetchall()
        if not rows:
            return 0, after_seq, prev_hash
        sealed_ns = time.time_ns()
        seals = []
        prev_seq = after_seq
        for row in rows:
            digest = link_hash(prev_hash, record_content(row))
            seals.append((row[0], row[1], prev_seq, prev_hash, digest, sealed_ns))
            prev_seq, prev_hash = row[0], digest
        with cursor.cursor.copy(_COPY_SEALS_SQL) as copy:
            copy.set_types(_SEAL_TYPES)
            for seal in seals:
                copy.write_row(seal)
    return len(rows), prev_seq, prev_hash


def audit_seal(*, batch_size: int = 20_000, max_records: int | None = None) -> SealResult:
    """One sealer tick: take a horizon, then seal every record up to the largest safe one.

    Returns at once (locked=False) when another sealer holds the lock. `max_records` bounds
    the work of one tick; the rest waits for the next."""
    seal_horizon_take()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", SEALER_LOCK)
        if not cursor.fetchone()[0]:
            return SealResult(sealed=0, last_seq=None, horizon=None, locked=False)
    try:
        horizon = _safe_horizon()
        last_seq, last_hash = last_seal()
        sealed = 0
        if horizon is not None:
            while max_records is None or sealed < max_records:
                limit = batch_size if max_records is None else min(batch_size, max_records - sealed)
                count, last_seq, last_hash = _seal_batch(last_seq, last_hash, horizon, limit)
                sealed += count
                if count < limit:
                    break
            _prune_horizons(horizon)
        if sealed:
            # Every second while anything trades: at INFO it buried `make run`'s console.
            logger.debug("audit records sealed", extra={"sealed": sealed, "last_seq": last_seq})
        if last_seq is not None and anchor_pending(last_seq):
            anchored_seq, anchored_hash = last_seq, last_hash
            # Once committed (never a seal that could still roll back): audit/anchor.py.
            transaction.on_commit(lambda: anchor_write(anchored_seq, anchored_hash))
        return SealResult(sealed=sealed, last_seq=last_seq, horizon=horizon, locked=True)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", SEALER_LOCK)


def audit_seal_all(*, timeout: float = 10.0, batch_size: int = 20_000) -> int:
    """Seal until every record committed before this call is sealed (or the timeout passes:
    a transaction still running holds records back). Returns how many were sealed."""
    target, _ = seal_horizon_take()
    deadline = time.monotonic() + timeout
    total = 0
    while True:
        result = audit_seal(batch_size=batch_size)
        total += result.sealed
        if result.horizon is not None and result.horizon >= target:
            return total
        if time.monotonic() > deadline:
            return total
        time.sleep(0.02)

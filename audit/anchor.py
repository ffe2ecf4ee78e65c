"""The chain's anchor outside the database: the newest seal, written to a file now and then.

The seals chain every record to the one before it, so a record changed or removed inside the
sealed range breaks a link. The end of the chain has nothing after it: someone able to write
to the database (a superuser, triggers off) could remove the newest records with their seals
and leave a shorter chain that verifies. The sealer therefore appends the newest seal's
sequence number and hash to `AUDIT_EXPORT_DIR/anchors.log` (after its commit, at most every
ANCHOR_EVERY_SECONDS), a file the database cannot reach; `audit_verify` fails when the chain
ends before the last anchored seal or holds it with another hash.

Each line names the database it belongs to (its name and oid), so a recreated database (a test
run, a restore) does not read another one's anchors: `<name>:<oid> <seq> <hash hex>`.
"""

from __future__ import annotations

import time
from pathlib import Path

from django.conf import settings
from django.db import connection

ANCHOR_FILE_NAME = "anchors.log"
ANCHOR_EVERY_SECONDS = 10.0

_last_written = -ANCHOR_EVERY_SECONDS
_last_written_seq: int | None = None  # the seal this process anchored last


def anchor_path() -> Path:
    return Path(settings.AUDIT_EXPORT_DIR) / ANCHOR_FILE_NAME


def database_key() -> str:
    """This database, as its anchors name it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT datname, oid FROM pg_database WHERE datname = current_database()")
        name, oid = cursor.fetchone()
    return f"{name}:{oid}"


def anchor_pending(seq: int) -> bool:
    """Whether `seq`, the newest seal, is not the one this process anchored last: the sealer
    offers it again on every tick, so a seal skipped because it came less than
    ANCHOR_EVERY_SECONDS after the last anchor is anchored later even if nothing more is
    sealed (it had stayed unanchored, so removing it went unnoticed)."""
    return seq != _last_written_seq


def anchor_write(seq: int, seal_hash: bytes, *, force: bool = False) -> bool:
    """Append the seal (`seq`, `seal_hash`), committed, to the anchor file: when forced or
    ANCHOR_EVERY_SECONDS after the last one this process wrote. Whether it wrote."""
    global _last_written, _last_written_seq
    now = time.monotonic()
    if not force and now < _last_written + ANCHOR_EVERY_SECONDS:
        return False
    path = anchor_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="ascii") as anchors:
        anchors.write(f"{database_key()} {seq} {seal_hash.hex()}\n")
    _last_written = now
    _last_written_seq = seq
    return True


def anchor_latest() -> tuple[int, bytes] | None:
    """This database's newest anchored seal (highest seq), or None."""
    path = anchor_path()
    if not path.exists():
        return None
    key = database_key()
    latest: tuple[int, bytes] | None = None
    with path.open(encoding="ascii", errors="replace") as anchors:
        for line in anchors:
            parts = line.split()
            if len(parts) != 3 or parts[0] != key:
                continue
            try:
                seq, seal_hash = int(parts[1]), bytes.fromhex(parts[2])
            except ValueError:
                continue
            if latest is None or seq > latest[0]:
                latest = (seq, seal_hash)
    return latest

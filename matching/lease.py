"""The shard lease: who may write a shard's books.

A PostgreSQL advisory lock held on a dedicated connection (not Django's, which may reconnect
silently and so drop the lock without telling us), plus an epoch in the shard-state row,
bumped on every acquisition, that each batch transaction checks: a worker that lost its lock
finds the epoch moved and stops before writing.
"""

import logging
import os
import socket
import time

import psycopg
from django.conf import settings

logger = logging.getLogger(__name__)

# First key of the two-integer advisory lock form; the second is the shard number.
LEASE_LOCK_CLASS = 0x4D41  # "MA"


def database_conninfo() -> str:
    """A libpq connection string for the default database, built from Django's settings."""
    db = settings.DATABASES["default"]
    parts = {
        "dbname": db["NAME"],
        "user": db.get("USER") or "",
        "password": db.get("PASSWORD") or "",
        "host": db.get("HOST") or "",
        "port": str(db.get("PORT") or ""),
        "connect_timeout": str(db.get("OPTIONS", {}).get("connect_timeout", 3)),
        "application_name": "exchange-lease",
    }
    return psycopg.conninfo.make_conninfo(**{k: v for k, v in parts.items() if v})


class LeaseLost(Exception):
    """The lease connection died or another worker took the shard."""


class ShardLease:
    """Exclusive ownership of one shard for as long as the dedicated connection lives."""

    def __init__(self, *, shard: int) -> None:
        self.shard = shard
        self.epoch: int | None = None
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self._conn: psycopg.Connection | None = None

    def acquire(self, *, wait: bool = True, poll_seconds: float = 0.5, should_stop=None) -> bool:
        """Take the lease, waiting as a standby while another process holds it.

        Returns False when `wait` is false and the lease is taken, or when `should_stop()`
        turns true while waiting.
        """
        self._conn = psycopg.connect(database_conninfo(), autocommit=True)
        while True:
            row = self._conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (LEASE_LOCK_CLASS, self.shard)
            ).fetchone()
            if row[0]:
                break
            if not wait or (should_stop is not None and should_stop()):
                self.release()
                return False
            time.sleep(poll_seconds)
        self.epoch = self._conn.execute(
            """
            INSERT INTO matching_shardstate (shard, lease_epoch, holder, acquired_at)
            VALUES (%s, 1, %s, now())
            ON CONFLICT (shard) DO UPDATE
               SET lease_epoch = matching_shardstate.lease_epoch + 1,
                   holder = EXCLUDED.holder,
                   acquired_at = EXCLUDED.acquired_at
            RETURNING lease_epoch
            """,
            (self.shard, self.holder),
        ).fetchone()[0]
        logger.info("shard lease acquired", extra={"shard": self.shard, "epoch": self.epoch})
        return True

    def verify(self) -> None:
        """Raise LeaseLost unless our connection is alive and the epoch is still ours."""
        if self._conn is None or self.epoch is None:
            raise LeaseLost(f"shard {self.shard}: lease not held")
        try:
            row = self._conn.execute(
                "SELECT lease_epoch FROM matching_shardstate WHERE shard = %s", (self.shard,)
            ).fetchone()
        except psycopg.Error as exc:
            raise LeaseLost(f"shard {self.shard}: lease connection lost: {exc}") from exc
        if row is None or row[0] != self.epoch:
            raise LeaseLost(
                f"shard {self.shard}: epoch moved from {self.epoch} to {row and row[0]}"
            )

    def release(self) -> None:
        """Give the lease up (closing the connection releases the advisory lock)."""
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

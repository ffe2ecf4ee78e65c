"""The shard lease: who may write a shard's books.

A PostgreSQL advisory lock held on a dedicated connection (not Django's, which may reconnect
silently and so drop the lock without telling us), plus an epoch in the shard-state row,
bumped on every acquisition, that each batch transaction checks: a worker that lost its lock
finds the epoch moved and stops before writing.

A holder that hangs (stopped, frozen, its host paused) keeps its connections and so the lock.
The holder keeps its lease connection busy from a thread (a statement a second), and a standby
that sees the lease connection idle for longer than `MATCHING_LEASE_STALE_SECONDS` fences the
holder: it terminates every database session of the holder process (all named after it), which
releases the lock and rolls back the holder's batch in flight with the row and user locks it
held. If the holder wakes up, its next statement fails and it exits, having written nothing.
"""

import logging
import os
import socket
import threading
import time

import psycopg
from django.conf import settings

logger = logging.getLogger(__name__)

# First key of the two-integer advisory lock form; the second is the shard number.
LEASE_LOCK_CLASS = 0x4D41  # "MA"


WORKER_SESSION_PREFIX = "exchange-matching:"


def session_name(pid: int | None = None) -> str:
    """The `application_name` of every database session of a matching worker process: how a
    standby finds all of a hung holder's sessions (PostgreSQL keeps 63 bytes of it)."""
    return f"{WORKER_SESSION_PREFIX}{pid or os.getpid()}@{socket.gethostname()}"[:63]


# Connection options of DATABASES that are not the server's address or TLS: the pool's and
# Django's own, and the session settings (lock and idle timeouts) meant for Django's sessions.
_NOT_CONNINFO = {
    "pool",
    "prepare_threshold",
    "options",
    "connect_timeout",
    "application_name",
    "fallback_application_name",
}


def database_conninfo(*, application_name: str = "exchange-lease") -> str:
    """A libpq connection string for the default database, built from Django's settings.

    With the URL's libpq parameters (`?sslmode=verify-full&sslrootcert=...`, `?host=/socket/
    dir`): the lease and /healthz connections had dropped them, and so went in plain text
    where the URL required TLS, or to the default socket directory instead of the URL's."""
    db = settings.DATABASES["default"]
    keywords = {d.keyword.decode() for d in psycopg.pq.Conninfo.get_defaults()}
    extra = {
        key: str(value)
        for key, value in db.get("OPTIONS", {}).items()
        if key in keywords and key not in _NOT_CONNINFO and value not in (None, "")
    }
    # The URL's own session options (a managed server's `?options=endpoint%3D...`), without
    # the lock and idle timeouts the settings add for Django's sessions.
    extra["options"] = getattr(settings, "DATABASE_URL_OPTIONS", "")
    parts = {
        "dbname": db["NAME"],
        "user": db.get("USER") or "",
        "password": db.get("PASSWORD") or "",
        "host": db.get("HOST") or "",
        "port": str(db.get("PORT") or ""),
        "connect_timeout": str(db.get("OPTIONS", {}).get("connect_timeout", 3)),
        "application_name": application_name,
    }
    given = {**extra, **{key: value for key, value in parts.items() if value}}
    return psycopg.conninfo.make_conninfo(**{k: v for k, v in given.items() if v})


class LeaseLost(Exception):
    """The lease connection died or another worker took the shard."""


# The backend holding a shard's lease lock (the two-key form: classid, objid, objsubid 2), and
# how long its session has been idle.
LEASE_HOLDER_SQL = """
SELECT a.pid, a.application_name,
       EXTRACT(EPOCH FROM clock_timestamp() - a.state_change)::float8 AS idle_seconds
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
   AND l.classid = %s AND l.objid = %s
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND a.state = 'idle'
"""

# Every session of the holder process (its lease, its batches' and its reads'), and the lease
# backend itself in case it is not named after the process.
FENCE_SQL = """
SELECT a.pid, pg_terminate_backend(a.pid)
  FROM pg_stat_activity a
 WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
   AND (a.application_name = %s OR a.pid = %s)
"""


class ShardLease:
    """Exclusive ownership of one shard for as long as the dedicated connection lives."""

    def __init__(self, *, shard: int, stale_seconds: float | None = None, on_fenced=None) -> None:
        self.shard = shard
        self.epoch: int | None = None
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        # A holder whose lease session stayed idle this long is hung and gets fenced (0: never).
        self.stale_seconds = (
            settings.MATCHING_LEASE_STALE_SECONDS if stale_seconds is None else stale_seconds
        )
        # The hung holder this process fenced while waiting for this acquisition (what the
        # takeover's audit record names), and who hears of each fence as it happens (the
        # worker audits it: another standby may win the lease it freed).
        self.fenced: dict | None = None
        self.on_fenced = on_fenced
        self._conn: psycopg.Connection | None = None
        self._keepalive_stop = threading.Event()
        self._keepalive: threading.Thread | None = None

    def acquire(self, *, wait: bool = True, poll_seconds: float = 0.5, should_stop=None) -> bool:
        """Take the lease, waiting as a standby while another process holds it (and fencing
        that process if it hangs).

        Returns False when `wait` is false and the lease is taken, or when `should_stop()`
        turns true while waiting.
        """
        self.fenced = None
        self._conn = psycopg.connect(
            database_conninfo(application_name=session_name()), autocommit=True
        )
        waiting = False
        while True:
            row = self._conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (LEASE_LOCK_CLASS, self.shard)
            ).fetchone()
            if row[0]:
                break
            if not wait or (should_stop is not None and should_stop()):
                self.release()
                return False
            if not waiting:
                # Said once the lock was found taken, on the session that waits (not before it
                # is open): whoever reads it may count on this process being a standby.
                logger.info("shard worker waiting for lease", extra={"shard": self.shard})
                waiting = True
            if self.stale_seconds and self._fence_if_hung():
                time.sleep(0.05)  # the ended backend lets go in a moment: be first to take it
                continue
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
        self._keepalive_stop.clear()
        self._keepalive = threading.Thread(
            target=self._keep_alive, name=f"lease-keepalive-{self.shard}", daemon=True
        )
        self._keepalive.start()
        return True

    def _keep_alive(self) -> None:
        """Show standbys that this process is alive: a statement on the lease connection every
        second, whatever the main loop is busy with (a long recovery, a large batch)."""
        interval = max(min(self.stale_seconds / 4, 1.0), 0.05) if self.stale_seconds else 1.0
        while not self._keepalive_stop.wait(interval):
            conn = self._conn
            if conn is None:
                return
            try:
                conn.execute("SELECT 1")
            except psycopg.Error:
                return  # the main loop's next verify() finds the connection gone

    def _fence_if_hung(self) -> bool:
        """Terminate the holder's sessions if its lease session has been idle for longer than
        `stale_seconds` (the lock is free at the next try); whether it did."""
        row = self._conn.execute(LEASE_HOLDER_SQL, (LEASE_LOCK_CLASS, self.shard)).fetchone()
        if row is None or row[2] < self.stale_seconds:
            return False
        backend_pid, session, idle_seconds = row
        terminated = [
            r[0] for r in self._conn.execute(FENCE_SQL, (session, backend_pid)).fetchall() if r[1]
        ]
        process = session.removeprefix(WORKER_SESSION_PREFIX).partition("@")[0]
        self.fenced = {
            "session": session,
            "pid": int(process) if process.isdigit() else None,  # the hung process's
            "backend_pid": backend_pid,  # its lease session's, in pg_stat_activity
            "idle_seconds": round(idle_seconds, 1),
            "sessions_terminated": len(terminated),
        }
        logger.warning(
            "shard holder hung: its sessions terminated",
            extra={"shard": self.shard, **self.fenced},
        )
        if self.on_fenced is not None:
            self.on_fenced(dict(self.fenced))
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
        self._keepalive_stop.set()
        if self._keepalive is not None and self._keepalive is not threading.current_thread():
            self._keepalive.join(timeout=5)
            self._keepalive = None
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

"""The shard worker process: holds the shard's lease and reports its heartbeat.

The order path (recovery, command batches, durable commits) is `matching.batch_loop.ShardLoop`;
this module owns the process life cycle around it: standby until the lease is free, heartbeat
while holding it, exit when the lease is lost (1) or a batch fails (3) so the supervisor
restarts us and the next holder rebuilds from PostgreSQL.
"""

import contextlib
import logging
import os
import signal
import threading
import time

import psycopg
import redis
from django.conf import settings
from django.db import Error as DjangoDatabaseError
from django.db import transaction
from django.db.backends.signals import connection_created

from audit.events import AuditEvent
from audit.services import audit_record
from exchange.redis_connection import redis_client
from matching.batch_loop import BatchFailed, ShardLoop
from matching.batch_writer import LeaseFenced
from matching.heartbeat import heartbeat_clear, heartbeat_write
from matching.lease import LeaseLost, ShardLease, session_name
from matching.publish import Publisher

logger = logging.getLogger(__name__)


class ShardWorker:
    """One process per shard; a second one for the same shard waits as a standby."""

    def __init__(self, *, shard: int, heartbeat_seconds: float = 1.0) -> None:
        if not 0 <= shard < settings.MATCHING_SHARDS:
            raise ValueError(
                f"shard {shard} does not exist: MATCHING_SHARDS is {settings.MATCHING_SHARDS}"
            )
        self.shard = shard
        self.heartbeat_seconds = heartbeat_seconds
        self.lease = ShardLease(shard=shard, on_fenced=self._audit_fenced)
        self.stopping = threading.Event()
        self.heartbeat_failing = False  # logged once an outage, not at every beat

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stopping.set())

    def run(self) -> int:
        """Run until stopped (exit code 0), until the lease is lost (exit code 1), or until a
        batch fails or the database ends its sessions (exit code 3: restart and rebuild)."""
        # Every session of this process carries its name, so that a standby can end them all
        # if this process hangs holding the lease (matching.lease).
        connection_created.connect(_name_session, dispatch_uid="matching-session-name")
        logger.info("shard worker starting", extra={"shard": self.shard})
        try:
            if not self.lease.acquire(wait=True, should_stop=self.stopping.is_set):
                return 0
        except (DjangoDatabaseError, psycopg.Error) as exc:
            # A standby's session ended while it waited (a restart of PostgreSQL, or a sweep of
            # the workers' sessions): it holds nothing yet; it is started again.
            logger.error(
                "database connection lost while waiting for the lease, exiting",
                extra={"shard": self.shard, "why": str(exc).strip()},
            )
            return 3
        stop_reason = "error"
        loop: ShardLoop | None = None
        try:
            self._audit_started()
            self._beat()
            loop = ShardLoop(
                shard=self.shard,
                epoch=self.lease.epoch,
                actor_label=f"worker:{self.lease.holder}",
                publisher=Publisher(
                    client=redis_client(),
                    shard=self.shard,
                    consumer=self.lease.holder,
                    epoch=self.lease.epoch,
                ),
            )
            loop.recover()
            logger.info(
                "shard worker serving", extra={"shard": self.shard, "epoch": self.lease.epoch}
            )
            self._beat()  # recover() wrote the snapshots: nothing to restore yet
            next_beat = time.monotonic() + self.heartbeat_seconds
            while not self.stopping.is_set():
                if time.monotonic() >= next_beat:
                    self.lease.verify()
                    previous = self._beat()
                    if previous is False or (previous and loop.publisher.snapshots_lost):
                        # Our heartbeat was gone: so may the book snapshots be (a wipe, a
                        # restart of Redis), and the order book API would read empty books.
                        # Or a batch's snapshots did not get through while Redis was out of
                        # reach: a book quiet since would read as before that batch for good
                        # (its depth, and order entry's price band and market buy holds).
                        loop.redis_restore()
                    next_beat = time.monotonic() + self.heartbeat_seconds
                loop.step()
            loop.close()  # the batch in flight commits and publishes before we let go
            stop_reason = "stopped"
        except (LeaseLost, LeaseFenced) as exc:
            stop_reason = "lease lost"
            logger.error("shard lease lost, exiting", extra={"shard": self.shard, "why": str(exc)})
            return 1
        except BatchFailed as exc:
            stop_reason = "batch failed"
            logger.error(
                "batch failed, exiting to rebuild from PostgreSQL",
                extra={"shard": self.shard, "why": str(exc)},
            )
            return 3
        except (DjangoDatabaseError, psycopg.Error) as exc:
            # PostgreSQL ended this process's sessions under the loop (a restart, or a standby
            # fencing it as hung): what it holds in memory may be behind; it is rebuilt.
            stop_reason = "database connection lost"
            logger.error(
                "database connection lost, exiting to rebuild from PostgreSQL",
                extra={"shard": self.shard, "why": str(exc).strip()},
            )
            return 3
        finally:
            if loop is not None:
                try:
                    loop.shutdown()
                except Exception as exc:  # exiting anyway: the heartbeat must still be cleared
                    logger.warning("writer thread not stopped", extra={"why": str(exc)})
            self._clear_heartbeat()
            self._audit_stopped(stop_reason)
            self.lease.release()
            logger.info("shard worker stopped", extra={"shard": self.shard})
        return 0

    def _audit_lifecycle(self, event: str, **extra) -> None:
        with transaction.atomic():
            audit_record(
                event_type=event,
                actor=f"worker:{self.lease.holder}",
                shard=self.shard,
                payload={
                    "shard": self.shard,
                    "epoch": self.lease.epoch,
                    "holder": self.lease.holder,
                    **extra,
                },
            )

    def _audit_fenced(self, fenced: dict) -> None:
        """Record the fencing of a hung holder as it happens, whoever then wins the lease."""
        try:
            with transaction.atomic():
                audit_record(
                    event_type=AuditEvent.HOLDER_FENCED,
                    actor=f"worker:{self.lease.holder}",
                    shard=self.shard,
                    payload={"shard": self.shard, "fenced_holder": fenced},
                )
        except DjangoDatabaseError as exc:  # the lease loop goes on; the log has it
            logger.warning("fencing not audited", extra={"shard": self.shard, "why": str(exc)})

    def _audit_started(self) -> None:
        """Record the lease acquisition; a takeover when the shard had a previous holder.

        A failure propagates: a worker that cannot write the trail must not run the shard."""
        takeover = (self.lease.epoch or 0) > 1
        fenced = {"fenced_holder": self.lease.fenced} if self.lease.fenced else {}
        self._audit_lifecycle(
            AuditEvent.SHARD_TAKEOVER if takeover else AuditEvent.WORKER_STARTED, **fenced
        )

    def _audit_stopped(self, reason: str) -> None:
        """Record the stop; best effort, since the process is exiting anyway (often because
        the database is what failed)."""
        try:
            self._audit_lifecycle(AuditEvent.WORKER_STOPPED, reason=reason)
        except DjangoDatabaseError as exc:  # a session another worker ended is an InterfaceError
            logger.warning("worker stop not audited", extra={"shard": self.shard, "why": str(exc)})

    def _beat(self) -> bool | None:
        """Write the heartbeat; whether the previous one was still there (None: Redis out of
        reach)."""
        try:
            previous = heartbeat_write(
                client=redis_client(),
                shard=self.shard,
                epoch=self.lease.epoch,
                pid=os.getpid(),
                ttl_ms=settings.MATCHING_HEARTBEAT_TTL_MS,
            )
        except redis.RedisError as exc:
            # Redis is transport only: the shard keeps its lease and its durable work. Logged
            # when the outage starts and when it ends, not at every beat (a line a second).
            if not self.heartbeat_failing:
                self.heartbeat_failing = True
                logger.warning(
                    "heartbeat not written", extra={"shard": self.shard, "why": str(exc)}
                )
            return None
        if self.heartbeat_failing:
            self.heartbeat_failing = False
            logger.info("heartbeat written again", extra={"shard": self.shard})
        return previous

    def _clear_heartbeat(self) -> None:
        if self.lease.epoch is None:
            return
        with contextlib.suppress(redis.RedisError):
            heartbeat_clear(client=redis_client(), shard=self.shard, epoch=self.lease.epoch)


def _name_session(sender, connection, **kwargs) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('application_name', %s, false)", [session_name()])

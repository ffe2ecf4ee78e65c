"""The shard worker process: holds the shard's lease and reports its heartbeat.

The order path (command stream, engine batches, durable commits) plugs into `ShardWorker.run`'s
loop; this module owns the process life cycle around it: standby until the lease is free,
heartbeat while holding it, exit when the lease is lost so the supervisor restarts us.
"""

import contextlib
import logging
import os
import signal
import threading

import redis
from django.conf import settings

from exchange.redis_connection import redis_client
from matching.heartbeat import heartbeat_clear, heartbeat_write
from matching.lease import LeaseLost, ShardLease

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
        self.lease = ShardLease(shard=shard)
        self.stopping = threading.Event()

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stopping.set())

    def run(self) -> int:
        """Run until stopped (exit code 0) or until the lease is lost (exit code 1)."""
        logger.info("shard worker waiting for lease", extra={"shard": self.shard})
        if not self.lease.acquire(wait=True, should_stop=self.stopping.is_set):
            return 0
        try:
            while not self.stopping.is_set():
                self.lease.verify()
                self._beat()
                self.stopping.wait(self.heartbeat_seconds)
        except LeaseLost as exc:
            logger.error("shard lease lost, exiting", extra={"shard": self.shard, "why": str(exc)})
            return 1
        finally:
            self._clear_heartbeat()
            self.lease.release()
            logger.info("shard worker stopped", extra={"shard": self.shard})
        return 0

    def _beat(self) -> None:
        try:
            heartbeat_write(
                client=redis_client(),
                shard=self.shard,
                epoch=self.lease.epoch,
                pid=os.getpid(),
                ttl_ms=settings.MATCHING_HEARTBEAT_TTL_MS,
            )
        except redis.RedisError as exc:
            # Redis is transport only: the shard keeps its lease and its durable work.
            logger.warning("heartbeat not written", extra={"shard": self.shard, "why": str(exc)})

    def _clear_heartbeat(self) -> None:
        with contextlib.suppress(redis.RedisError):
            heartbeat_clear(client=redis_client(), shard=self.shard)

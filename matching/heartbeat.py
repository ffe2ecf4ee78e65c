"""Shard heartbeats in Redis: a key with a TTL that the shard's lease holder keeps refreshing."""

import json
import time

import redis

from exchange.redis_connection import redis_key


def heartbeat_key(shard: int) -> str:
    return redis_key("matching", "shard", shard, "heartbeat")


def heartbeat_write(*, client: redis.Redis, shard: int, epoch: int, pid: int, ttl_ms: int) -> bool:
    """Record that the holder of `shard` (lease `epoch`) is alive; expires after `ttl_ms`.
    Returns whether the previous heartbeat was still there (False after a Redis wipe or
    restart, or a gap longer than the TTL: what else the worker keeps in Redis may be gone)."""
    value = json.dumps({"epoch": epoch, "pid": pid, "ts_ms": int(time.time() * 1000)})
    key = heartbeat_key(shard)
    pipe = client.pipeline(transaction=False)
    pipe.exists(key)
    pipe.set(key, value, px=ttl_ms)
    existed, _ = pipe.execute()
    return bool(existed)


def heartbeat_clear(*, client: redis.Redis, shard: int) -> None:
    client.delete(heartbeat_key(shard))


def heartbeats_read(*, client: redis.Redis, shard_count: int) -> dict[int, dict | None]:
    """Each shard's latest heartbeat, or None when it has expired (no live holder)."""
    values = client.mget([heartbeat_key(shard) for shard in range(shard_count)])
    return {
        shard: (json.loads(value) if value is not None else None)
        for shard, value in enumerate(values)
    }

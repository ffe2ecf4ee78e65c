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


# Delete the heartbeat only if it is still the given epoch's: a holder that was fenced and
# then woke up must not erase its successor's.
_CLEAR_OWN_HEARTBEAT = """
local value = redis.call('GET', KEYS[1])
if value and cjson.decode(value)['epoch'] == tonumber(ARGV[1]) then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def heartbeat_clear(*, client: redis.Redis, shard: int, epoch: int) -> bool:
    """Remove the heartbeat of `shard` if lease `epoch` wrote it; whether it did."""
    return bool(client.eval(_CLEAR_OWN_HEARTBEAT, 1, heartbeat_key(shard), epoch))


def heartbeats_read(*, client: redis.Redis, shard_count: int) -> dict[int, dict | None]:
    """Each shard's latest heartbeat, or None when it has expired (no live holder)."""
    values = client.mget([heartbeat_key(shard) for shard in range(shard_count)])
    return {
        shard: (json.loads(value) if value is not None else None)
        for shard, value in enumerate(values)
    }

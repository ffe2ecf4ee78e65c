"""The process's Redis client and key naming (every key carries the deployment's prefix)."""

from functools import lru_cache

import redis
from django.conf import settings


@lru_cache(maxsize=1)
def redis_client() -> redis.Redis:
    """A shared client with short timeouts: Redis is transport, never worth a hung request."""
    return redis.Redis.from_url(
        settings.REDIS_URL,
        socket_connect_timeout=1,
        socket_timeout=2,
        health_check_interval=30,
    )


def redis_key(*parts: object) -> str:
    """Build a key under the deployment's prefix, e.g. redis_key("matching", 0, "heartbeat")."""
    return settings.REDIS_KEY_PREFIX + ":".join(str(part) for part in parts)

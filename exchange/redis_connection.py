"""The process's Redis client and key naming (every key carries the deployment's prefix)."""

import logging
import secrets
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache

import redis
from django.conf import settings

logger = logging.getLogger(__name__)


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


@lru_cache(maxsize=8)
def _database_number(url: str) -> int:
    return int(redis.connection.parse_url(url).get("db") or 0)


def pubsub_channel(*parts: object) -> str:
    """A PUBLISH/SUBSCRIBE channel under the deployment's prefix and its database number.

    Keys live in the URL's database, but channels are one namespace for the whole server: two
    deployments on databases 5 and 6 of one Redis with the default prefix received each other's
    trades, order events and book updates (a forged update from another database stuck in the
    socket's books)."""
    return redis_key(f"db{_database_number(settings.REDIS_URL)}", *parts)


# A change counter: every process that remembers what it read at some value looks again only
# once the counter has moved (API-key revocations, ended web sessions, instrument rules). Its
# values are random, never a count: Redis may lose everything (a flush, a restart; it holds
# nothing the exchange cannot lose), and a count set back to 0 came back to a value a process
# still remembered, whose cache then served a key revoked after the loss as valid until it
# expired.
def _counter_value() -> bytes:
    return secrets.token_hex(8).encode()


def change_counter_bump(key: str, *, unsignalled: str) -> None:
    """Move the counter at `key` to a value it never had; without Redis, log `unsignalled` (the
    readers then notice only when they look again anyway)."""
    try:
        redis_client().set(key, _counter_value())
    except redis.RedisError as exc:
        logger.warning(unsignalled, extra={"why": str(exc)})


def change_counter_read(key: str) -> bytes | None:
    """The counter at `key` (None without Redis: look again). A counter Redis does not have
    (never moved, or lost) starts at a value it never had, so nothing remembered from before
    matches it."""
    try:
        value = redis_get(key)
        if value is None:
            pipe = redis_client().pipeline(transaction=False)
            pipe.set(key, _counter_value(), nx=True)  # another process may start it first
            pipe.get(key)
            value = pipe.execute()[1]
        return value
    except redis.RedisError:
        return None


# The values a `redis_read_ahead` block of this thread read, by key (None outside any block).
_read_ahead = threading.local()


@contextmanager
def redis_read_ahead(keys: Iterable[str]) -> Iterator[None]:
    """Read `keys` in ONE round trip (MGET); inside the block, `redis_get` of any of them on
    this thread answers from what was read.

    An order op reads a change counter or two and a book snapshot at different depths of its
    call, and each GET had been a round trip of its own (~150 µs of the web process's CPU on
    a slow machine: redis-py, two system calls and a thread switch). The values are those of
    the moment the block began, as if the op had run a few hundred microseconds sooner. A key
    an enclosing block read is not read again. Without Redis nothing is read ahead: each
    reader then asks Redis itself, and answers as it does when Redis is down."""
    outer = getattr(_read_ahead, "values", None)
    wanted = [key for key in dict.fromkeys(keys) if outer is None or key not in outer]
    values = outer
    if wanted:
        try:
            read = redis_client().mget(wanted)
        except redis.RedisError:
            read = None
        if read is not None:
            values = {**(outer or {}), **dict(zip(wanted, read, strict=True))}
    _read_ahead.values = values
    try:
        yield
    finally:
        _read_ahead.values = outer


def redis_get(key: str) -> bytes | None:
    """GET `key`, from this thread's `redis_read_ahead` block when it read it (raises
    RedisError as GET does)."""
    values = getattr(_read_ahead, "values", None)
    if values is not None and key in values:
        return values[key]
    return redis_client().get(key)

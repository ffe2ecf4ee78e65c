"""Throttling of failed sign-ins, per account and per client IP, on Redis counters.

A failed password and a failed one-time code both count, against the account and the client
IP; a sign-up refused because its email is taken counts against the IP only (the refusal tells
that the address has an account, so probing addresses is throttled as guessing passwords is,
without locking the owner of the address out). Counters live in fixed windows of
`LOGIN_THROTTLE_WINDOW_SECONDS` computed from the caller's clock (`now`, Unix seconds), so
tests choose the instant instead of waiting; each key names its window and expires one window
after it ends. The failures "in the last window" are estimated as a sliding window: this
window's count plus the previous window's, weighted by how much of it still overlaps (rounded
up), so there is no burst of twice the limit across a window boundary. Incrementing is one
MULTI/EXEC of `SET key 0 EX ttl NX` + `INCR key`: atomic, and only Redis 6.2 commands.
Accounts are keyed by a hash of the normalised email, so no address is written to Redis.

If Redis is unreachable the throttle fails open (logged): Redis is transport and cache here,
and losing it must not lock every user out; passwords and codes are still checked.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass

import redis
from django.conf import settings

from accounts.address_groups import address_group
from exchange.redis_connection import redis_client, redis_key

logger = logging.getLogger(__name__)


def client_ip(request: object) -> str | None:
    """The address a sign-in attempt came from (the connection's, REMOTE_ADDR), if known."""
    return (getattr(request, "META", None) or {}).get("REMOTE_ADDR") or None


@dataclass(frozen=True, slots=True)
class ThrottleState:
    """Failures estimated over the last window, and whether sign-in is refused for now."""

    account_failures: int
    ip_failures: int
    throttled_by: str | None  # "account", "ip" or None
    retry_after_seconds: int

    @property
    def throttled(self) -> bool:
        return self.throttled_by is not None


def normalize_email(email: str) -> str:
    return (email or "").strip().lower()


def _window(now: float) -> tuple[int, float]:
    """The index of the window holding `now` and how far into it `now` is (0 to 1)."""
    length = settings.LOGIN_THROTTLE_WINDOW_SECONDS
    index = int(now // length)
    return index, (now - index * length) / length


def _keys(email: str | None, ip: str | None, window: int) -> list[str]:
    """The account key (without an email: none) and, with an IP, the IP key of one window."""
    keys = []
    if email is not None:
        digest = hashlib.sha256(normalize_email(email).encode()).hexdigest()[:32]
        keys.append(redis_key("login_throttle", "account", digest, window))
    if ip:
        keys.append(redis_key("login_throttle", "ip", address_group(ip), window))
    return keys


def _scopes(email: str | None, ip: str | None) -> tuple[str, ...]:
    """What `_keys` counts, in its order."""
    return (*(("account",) if email is not None else ()), *(("ip",) if ip else ()))


def _estimate(current: int, previous: int, elapsed: float) -> int:
    return math.ceil(current + previous * (1 - elapsed) - 1e-9)


def _retry_after(current: int, previous: int, elapsed: float, limit: int) -> int:
    """Seconds until the estimate falls below `limit` if nothing else fails."""
    length = settings.LOGIN_THROTTLE_WINDOW_SECONDS
    if current < limit:
        # The previous window's weight must shrink: prev * (1 - f) <= limit - 1 - current.
        needed = 1 - (limit - 1 - current) / previous
        return max(1, math.ceil((needed - elapsed) * length))
    # Wait for the next window, then for this window's weight to shrink there.
    needed = 1 - (limit - 1) / current
    return max(1, math.ceil((1 - elapsed + needed) * length))


def _state(counts: list[int], scopes: tuple[str, ...], elapsed: float) -> ThrottleState:
    """`counts`: this window's count of each of `scopes`, then the previous window's."""
    half = len(counts) // 2
    current, previous = counts[:half], counts[half:]
    limits = {
        "account": settings.LOGIN_THROTTLE_ACCOUNT_FAILURES,
        "ip": settings.LOGIN_THROTTLE_IP_FAILURES,
    }
    estimates = {}
    throttled_by, retry_after = None, 0
    for name, c, p in zip(scopes, current, previous, strict=True):
        estimates[name] = _estimate(c, p, elapsed)
        # 0 turns a limit off, as the rate limits' 0 does (it had refused every sign-in, then
        # divided by zero reckoning when to retry: a 500).
        if limits[name] > 0 and estimates[name] >= limits[name]:
            wait = _retry_after(c, p, elapsed, limits[name])
            if wait > retry_after:
                throttled_by, retry_after = name, wait
    return ThrottleState(
        account_failures=estimates.get("account", 0),
        ip_failures=estimates.get("ip", 0),
        throttled_by=throttled_by,
        retry_after_seconds=retry_after,
    )


def login_throttle_state(*, email: str | None, ip: str | None, now: float) -> ThrottleState:
    """The failures counted for this email and IP over the window up to `now` (no email: the
    IP's only)."""
    window, elapsed = _window(now)
    keys = _keys(email, ip, window) + _keys(email, ip, window - 1)
    if not keys:
        return ThrottleState(0, 0, None, 0)
    try:
        values = redis_client().mget(keys)
    except redis.RedisError:
        logger.exception("login throttle: Redis unavailable, not throttling")
        return ThrottleState(0, 0, None, 0)
    return _state([int(v or 0) for v in values], _scopes(email, ip), elapsed)


def login_throttle_attempt(*, email: str | None, ip: str | None, now: float) -> ThrottleState:
    """Count an attempt as a failure BEFORE its password or code is checked, and return the
    state as the attempt found it. Throttled: the count is taken back and the attempt must be
    refused. Otherwise it stays counted unless `login_throttle_attempt_passed` takes it back.

    (Reading the counters, checking, then counting a failure let a burst of parallel attempts
    all read the counters before any failure was counted: 28 passwords of one account were
    checked in 10 s where 5 may be, the right one signed in.)"""
    window, elapsed = _window(now)
    length = settings.LOGIN_THROTTLE_WINDOW_SECONDS
    # Kept through the next window, which still weighs this one.
    ttl = math.ceil((2 - elapsed) * length) + 1
    keys = _keys(email, ip, window)
    if not keys:
        return ThrottleState(0, 0, None, 0)
    try:
        pipe = redis_client().pipeline(transaction=True)
        for key in keys:
            pipe.set(key, 0, ex=ttl, nx=True)
            pipe.incr(key)
        pipe.mget(_keys(email, ip, window - 1))
        results = pipe.execute()
    except redis.RedisError:
        logger.exception("login throttle: Redis unavailable, not throttling")
        return ThrottleState(0, 0, None, 0)
    found = [int(v) - 1 for v in results[1:-1:2]]  # without this attempt
    previous = [int(v or 0) for v in results[-1]]
    state = _state(found + previous, _scopes(email, ip), elapsed)
    if state.throttled:
        _take_back(keys)  # a refused attempt checked nothing: it is no failure
    return state


# DECR only a counter that is still there: a complete sign-in deletes the account's counters,
# and a DECR of a missing key would leave -1 there, without an expiry.
_DECR_IF_PRESENT = """
for _, key in ipairs(KEYS) do
    if redis.call('EXISTS', key) == 1 then redis.call('DECR', key) end
end
"""


def _take_back(keys: list[str]) -> None:
    if not keys:
        return
    try:
        redis_client().eval(_DECR_IF_PRESENT, len(keys), *keys)
    except redis.RedisError:
        logger.exception("login throttle: Redis unavailable, attempt not taken back")


def login_throttle_attempt_passed(*, email: str | None, ip: str | None, now: float) -> None:
    """The attempt `login_throttle_attempt` counted (at the same `now`) passed its check: it
    is no failure."""
    window, _ = _window(now)
    _take_back(_keys(email, ip, window))


def login_throttle_reset_account(*, email: str, now: float) -> None:
    """Forget this account's failures after a complete sign-in (the IP's count stays)."""
    window, _ = _window(now)
    try:
        redis_client().delete(*_keys(email, None, window), *_keys(email, None, window - 1))
    except redis.RedisError:
        logger.exception("login throttle: Redis unavailable, account counter not reset")

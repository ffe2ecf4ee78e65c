"""Rate limits: request weight per API key and per user (per client IP for requests without
credentials), in fixed 1 s and 1 min windows.

Two budgets: `requests` (every request, weight 1 unless the view says more) and `orders` (order
entry: place, cancel, amend, mass cancel). Each is counted per API key (when the request is
signed) and per user, or per IP for public market data, in Redis counters named by window
(`...:1s:<window index>`), so a counter never needs resetting: it expires after its window.
One Lua script checks every counter and increments them only when all stay within their
limits (a refused request costs nothing), atomically. Limits come from settings.RATE_LIMITS.
Redis being down lets requests through (Redis is transport here; refusing every order because a
cache is down would be worse).

Responses carry the caller's usage in the current windows (the key's counters for a signed
request, the user's for a web session): X-Used-Weight-1s/-1m (requests) and, on order entry,
X-Order-Weight-1s/-1m. A refused request is a 429 TooManyRequests with Retry-After (seconds).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import redis
from django.conf import settings
from django.utils.deprecation import MiddlewareMixin
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from accounts.address_groups import address_group
from accounts.signing import KeyCredentials
from exchange.redis_connection import redis_client, redis_key

logger = logging.getLogger(__name__)

WINDOWS_MS = {"1s": 1_000, "1m": 60_000}
# `auth_failures`: refused signatures per client IP (each is an audit row, so a flood of bad
# signatures is bounded); counted only by `auth_failure_allowed`, never in response headers.
BUCKETS = ("requests", "orders", "auth_failures")
HEADER_NAMES = {
    ("requests", "1s"): "X-Used-Weight-1s",
    ("requests", "1m"): "X-Used-Weight-1m",
    ("orders", "1s"): "X-Order-Weight-1s",
    ("orders", "1m"): "X-Order-Weight-1m",
}

# KEYS: counters; ARGV[1]: weight of each counter's bucket, ARGV[2]: limits, ARGV[3]: TTLs ms
# (ARGV[1..3] are space-separated lists, one entry per key). Returns {refused index or 0,
# used counts...}: on a refusal nothing is incremented and the counts are the current ones.
_CHECK_AND_COUNT = """
local weights, limits, ttls = {}, {}, {}
for w in string.gmatch(ARGV[1], '%S+') do weights[#weights + 1] = tonumber(w) end
for l in string.gmatch(ARGV[2], '%S+') do limits[#limits + 1] = tonumber(l) end
for t in string.gmatch(ARGV[3], '%S+') do ttls[#ttls + 1] = tonumber(t) end
local used = {}
local refused = 0
for i, key in ipairs(KEYS) do
  used[i] = tonumber(redis.call('GET', key) or '0')
  if refused == 0 and used[i] + weights[i] > limits[i] then refused = i end
end
if refused == 0 then
  for i, key in ipairs(KEYS) do
    used[i] = redis.call('INCRBY', key, weights[i])
    if used[i] == weights[i] then redis.call('PEXPIRE', key, ttls[i]) end
  end
end
local out = {refused}
for i = 1, #used do out[#out + 1] = used[i] end
return out
"""


@dataclass
class RateDecision:
    allowed: bool
    # (bucket, window) -> weight used in the current window by the caller's own counter.
    used: dict[tuple[str, str], int] = field(default_factory=dict)
    retry_after_s: int | None = None


_script = None


def _check_and_count():
    global _script
    if _script is None:
        _script = redis_client().register_script(_CHECK_AND_COUNT)
    return _script


def rate_limit_hit(
    *,
    user_id: int | None,
    key_id: int | None,
    weights: dict[str, int],
    now_ms: int | None = None,
    client_ip: str | None = None,
) -> RateDecision:
    """Count a request of `weights` ({"requests": 1, "orders": 1}) for the user and the key
    (or, without credentials, for the client's IP) at `now_ms`; refuse it (counting nothing)
    when any counter would pass its limit."""
    if not settings.RATE_LIMIT_ENABLED:
        return RateDecision(allowed=True)
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    keys, counter_weights, limits, ttls, meta = [], [], [], [], []
    if user_id is not None:
        scopes = [("user", user_id)] + ([("key", key_id)] if key_id is not None else [])
    else:
        scopes = [("ip", address_group(client_ip) if client_ip else "unknown")]
    for bucket in BUCKETS:
        weight = weights.get(bucket, 0)
        if weight <= 0:
            continue
        for scope, ident in scopes:
            for window, window_ms in WINDOWS_MS.items():
                limit = settings.RATE_LIMITS.get((bucket, scope, window), 0)
                if limit <= 0:  # 0 (or no setting) turns this limit off
                    continue
                keys.append(
                    redis_key("ratelimit", bucket, scope, ident, window, now_ms // window_ms)
                )
                counter_weights.append(weight)
                limits.append(limit)
                ttls.append(window_ms + 1_000)
                meta.append((bucket, scope, window, window_ms))
    if not keys:
        return RateDecision(allowed=True)
    try:
        refused, *counts = _check_and_count()(
            keys=keys,
            args=[
                " ".join(map(str, counter_weights)),
                " ".join(map(str, limits)),
                " ".join(map(str, ttls)),
            ],
        )
    except redis.RedisError:
        logger.warning("rate limiter unavailable (Redis): request let through", exc_info=True)
        return RateDecision(allowed=True)
    own_scope = "key" if key_id is not None else ("user" if user_id is not None else "ip")
    used = {
        (bucket, window): int(count)
        for (bucket, scope, window, _), count in zip(meta, counts, strict=True)
        if scope == own_scope
    }
    if not refused:
        return RateDecision(allowed=True, used=used)
    window_ms = meta[refused - 1][3]
    retry_after = max(1, math.ceil((window_ms - now_ms % window_ms) / 1000))
    return RateDecision(allowed=False, used=used, retry_after_s=retry_after)


def auth_failure_allowed(*, client_ip: str | None, now_ms: int | None = None) -> bool:
    """Count a refused signature for the client's IP; False once past the IP's budget (the
    request is then answered 429 and not audited again)."""
    return rate_limit_hit(
        user_id=None,
        key_id=None,
        weights={"auth_failures": 1},
        client_ip=client_ip,
        now_ms=now_ms,
    ).allowed


def view_weights(view, method: str) -> dict[str, int]:
    """A view's weights for a method: `rate_weights = {"POST": {"requests": 1, "orders": 1}}`;
    by default 1 request and no order entry. A HEAD weighs what the GET does."""
    per_method = getattr(view, "rate_weights", None) or {}
    if method == "HEAD" and "HEAD" not in per_method:
        # A HEAD runs the view's GET (Django drops the body): at the default weight a list was
        # read five times as often as its weight allows.
        method = "GET"
    return per_method.get(method, {"requests": 1})


class ApiRateThrottle(BaseThrottle):
    """The DRF throttle of every API request: per user and key, or per client IP for
    requests without credentials (public market data)."""

    def allow_request(self, request: Request, view) -> bool:
        self.retry_after = None
        user = request.user
        weights = view_weights(view, request.method)
        if getattr(user, "is_authenticated", False):
            key_id = request.auth.id if isinstance(request.auth, KeyCredentials) else None
            decision = rate_limit_hit(user_id=user.pk, key_id=key_id, weights=weights)
        else:
            # The connection's address (REMOTE_ADDR), as everywhere else. DRF's get_ident took
            # X-Forwarded-For as sent: a client named a new address each request, and was
            # never limited, or spent another client's budget.
            client_ip = request.META.get("REMOTE_ADDR") or "unknown"
            decision = rate_limit_hit(
                user_id=None, key_id=None, weights=weights, client_ip=client_ip
            )
        request._request.used_weight = decision.used
        self.retry_after = decision.retry_after_s
        return decision.allowed

    def wait(self) -> float | None:
        return self.retry_after


class UsedWeightHeadersMiddleware(MiddlewareMixin):
    """Copies the rate limiter's usage of a request into its response headers."""

    def process_response(self, request, response):
        for (bucket, window), used in (getattr(request, "used_weight", None) or {}).items():
            if (bucket, window) in HEADER_NAMES:
                response.headers[HEADER_NAMES[(bucket, window)]] = str(used)
        return response

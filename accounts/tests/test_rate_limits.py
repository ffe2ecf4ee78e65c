"""Rate limit counters in the real Redis, at chosen instants (windows, refusals, Retry-After)."""

import random

import pytest
from django.test import override_settings

from accounts.rate_limits import rate_limit_hit

MINUTE_START = 1_795_000_020_000  # ms since the epoch, a whole minute
LIMITS = {
    ("orders", "key", "1s"): 100,
    ("orders", "key", "1m"): 3,
    ("orders", "user", "1s"): 100,
    ("orders", "user", "1m"): 5,
    ("requests", "key", "1s"): 4,
    ("requests", "key", "1m"): 1000,
    ("requests", "user", "1s"): 100,
    ("requests", "user", "1m"): 1000,
    ("requests", "ip", "1s"): 3,
    ("requests", "ip", "1m"): 1000,
}
ORDER = {"requests": 1, "orders": 1}


@pytest.fixture(autouse=True)
def small_limits():
    with override_settings(RATE_LIMITS=LIMITS, RATE_LIMIT_ENABLED=True):
        yield


def ids() -> tuple[int, int]:
    """A user id and key id no other test uses (counters are keyed by them)."""
    return random.randrange(10**12, 10**13), random.randrange(10**12, 10**13)


def test_order_weight_is_counted_per_key_until_the_limit_then_refused_uncounted():
    user, key = ids()
    at = MINUTE_START + 40_000
    used = [
        rate_limit_hit(user_id=user, key_id=key, weights=ORDER, now_ms=at + n) for n in range(3)
    ]
    assert all(d.allowed for d in used)
    assert [d.used[("orders", "1m")] for d in used] == [1, 2, 3]
    refused = rate_limit_hit(user_id=user, key_id=key, weights=ORDER, now_ms=at + 10)
    assert not refused.allowed
    assert refused.retry_after_s == 20  # to the end of the minute
    assert refused.used[("orders", "1m")] == 3
    again = rate_limit_hit(user_id=user, key_id=key, weights=ORDER, now_ms=at + 11)
    assert again.used[("orders", "1m")] == 3  # the refusal counted nothing


def test_the_next_window_starts_from_zero():
    user, key = ids()
    for n in range(3):
        rate_limit_hit(user_id=user, key_id=key, weights=ORDER, now_ms=MINUTE_START + n)
    late = rate_limit_hit(user_id=user, key_id=key, weights=ORDER, now_ms=MINUTE_START + 59_999)
    assert not late.allowed and late.retry_after_s == 1
    nxt = rate_limit_hit(user_id=user, key_id=key, weights=ORDER, now_ms=MINUTE_START + 60_000)
    assert nxt.allowed and nxt.used[("orders", "1m")] == 1


def test_the_users_budget_is_shared_by_all_of_its_keys():
    user, first_key = ids()
    second_key = first_key + 1
    for n in range(3):
        hit = rate_limit_hit(user_id=user, key_id=first_key, weights=ORDER, now_ms=MINUTE_START + n)
        assert hit.allowed
    for n in (5, 6):
        hit = rate_limit_hit(
            user_id=user, key_id=second_key, weights=ORDER, now_ms=MINUTE_START + n
        )
        assert hit.allowed
    over = rate_limit_hit(user_id=user, key_id=second_key, weights=ORDER, now_ms=MINUTE_START + 7)
    assert not over.allowed  # the user's 5 a minute, though this key used only 2


def test_a_session_user_is_counted_on_the_user_budget_and_sees_its_own_usage():
    user, _ = ids()
    decision = rate_limit_hit(user_id=user, key_id=None, weights=ORDER, now_ms=MINUTE_START)
    assert decision.used == {
        ("requests", "1s"): 1,
        ("requests", "1m"): 1,
        ("orders", "1s"): 1,
        ("orders", "1m"): 1,
    }


def test_the_one_second_window_refuses_with_retry_after_one_second():
    user, key = ids()
    reads = {"requests": 1}
    at = MINUTE_START + 1_250
    assert [
        rate_limit_hit(user_id=user, key_id=key, weights=reads, now_ms=at + n).allowed
        for n in range(5)
    ] == [True, True, True, True, False]
    refused = rate_limit_hit(user_id=user, key_id=key, weights=reads, now_ms=at + 10)
    assert refused.retry_after_s == 1 and "orders" not in {b for b, _ in refused.used}
    assert rate_limit_hit(user_id=user, key_id=key, weights=reads, now_ms=at + 750).allowed
    assert not rate_limit_hit(user_id=user, key_id=key, weights=reads, now_ms=at + 749).allowed


def test_a_limit_of_zero_is_no_limit_and_disabled_limits_count_nothing():
    user, key = ids()
    with override_settings(RATE_LIMITS={**LIMITS, ("requests", "key", "1s"): 0}):
        assert all(
            rate_limit_hit(
                user_id=user, key_id=key, weights={"requests": 1}, now_ms=MINUTE_START
            ).allowed
            for _ in range(10)
        )
    with override_settings(RATE_LIMIT_ENABLED=False):
        off = rate_limit_hit(user_id=user, key_id=key, weights=ORDER, now_ms=MINUTE_START)
    assert off.allowed and off.used == {}


def test_requests_without_credentials_are_counted_per_client_ip():
    at = 1_700_000_000_000
    ip, other_ip = f"203.0.113.{random.randrange(256)}", f"2001:db8::{random.randrange(9999)}"
    hits = [
        rate_limit_hit(user_id=None, key_id=None, weights={"requests": 1}, client_ip=ip, now_ms=at)
        for _ in range(4)
    ]
    assert [h.allowed for h in hits] == [True, True, True, False]
    assert hits[2].used[("requests", "1s")] == 3 and hits[3].retry_after_s == 1
    other = rate_limit_hit(
        user_id=None, key_id=None, weights={"requests": 1}, client_ip=other_ip, now_ms=at
    )
    assert other.allowed and other.used[("requests", "1s")] == 1


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/v1/orders", "/api/v1/fills"])
def test_a_head_of_a_list_weighs_what_its_get_does(client, path):
    # A HEAD runs the view's GET (Django answers it without the body): it had cost the default
    # weight of 1, so a list could be fetched five times as often as its weight of 5 allows.
    from exchange.tests.api_client import make_user

    client.force_login(make_user("head", funds={}))
    head = client.head(path)  # the user's first request: its weight is all it used
    assert head.status_code == 200 and head["X-Used-Weight-1s"] == "5"


def test_an_ipv6_client_is_counted_by_its_64_network_and_a_mapped_ipv4_as_that_address():
    # Each IPv6 address had a budget of its own: a client given a /64 (2^64 addresses) was
    # never limited, nor was its sign-in guessing or its refused signatures.
    at = 1_700_000_100_000 + random.randrange(1_000) * 1_000
    net = f"2001:db8:{random.randrange(65536):x}:{random.randrange(65536):x}"

    def hit(client_ip: str):
        return rate_limit_hit(
            user_id=None, key_id=None, weights={"requests": 1}, client_ip=client_ip, now_ms=at
        )

    hits = [hit(f"{net}::{n:x}") for n in range(1, 5)]
    assert [h.allowed for h in hits] == [True, True, True, False]
    assert not hit(f"{net}:0:0:0:1").allowed  # the same /64, spelt out
    next_net = f"2001:db8:{random.randrange(65536):x}:{random.randrange(65536):x}::1"
    assert hit(next_net).allowed
    v4 = f"198.51.100.{random.randrange(256)}"
    assert [hit(v4).allowed, hit(f"::ffff:{v4}").allowed, hit(v4).allowed, hit(v4).allowed] == [
        True,
        True,
        True,
        False,
    ]

"""Failed sign-ins are throttled per account and per IP on Redis counters, at chosen instants."""

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from accounts.login_throttle import (
    login_throttle_attempt,
    login_throttle_attempt_passed,
    login_throttle_reset_account,
    login_throttle_state,
)
from conftest import RUN_PREFIX

WINDOW = 900
# Half-way through a window, so that `+ WINDOW` lands half-way through the next one.
T0 = 1_900_000_000 - 1_900_000_000 % WINDOW + WINDOW / 2


@pytest.fixture(autouse=True)
def limits(settings):
    settings.LOGIN_THROTTLE_ACCOUNT_FAILURES = 5
    settings.LOGIN_THROTTLE_IP_FAILURES = 20
    settings.LOGIN_THROTTLE_WINDOW_SECONDS = WINDOW


def email() -> str:
    return f"Someone.{uuid.uuid4().hex[:8]}@Example.test"


def ip() -> str:
    part = uuid.uuid4().int
    return f"10.{part % 250}.{part // 250 % 250}.{part // 62500 % 250}"


def failure(*, email: str, ip: str | None, now: float):
    """One attempt that failed its check: counted up front; the state after it."""
    login_throttle_attempt(email=email, ip=ip, now=now)
    return login_throttle_state(email=email, ip=ip, now=now)


def test_five_failures_throttle_the_account_and_the_count_decays_with_time():
    account, client_ip = email(), ip()
    for attempt in range(4):
        state = failure(email=account, ip=client_ip, now=T0 + attempt)
        assert not state.throttled
    state = failure(email=account, ip=client_ip, now=T0 + 4)
    assert state.throttled and state.throttled_by == "account"
    assert state.account_failures == 5
    # The same address in another case and with spaces is the same account.
    later = login_throttle_state(email=f"  {account.upper()} ", ip=ip(), now=T0 + 60)
    assert later.throttled_by == "account"
    assert 0 < later.retry_after_seconds <= 2 * WINDOW
    # Half a window into the next window, half of the 5 failures still weigh: 3 < 5.
    next_window = login_throttle_state(email=account, ip=client_ip, now=T0 + WINDOW)
    assert not next_window.throttled and next_window.account_failures == 3
    assert (
        login_throttle_state(email=account, ip=client_ip, now=T0 + 2 * WINDOW).account_failures == 0
    )


def test_no_burst_across_a_window_boundary():
    account = email()
    end_of_window = T0 + WINDOW / 2 - 2  # two seconds before the boundary
    for attempt in range(5):
        failure(email=account, ip=None, now=end_of_window + attempt * 0.1)
    just_after = login_throttle_state(email=account, ip=None, now=end_of_window + 3)
    assert just_after.throttled_by == "account"


def test_retry_after_is_when_the_estimate_drops_below_the_limit():
    account = email()
    for _ in range(5):
        failure(email=account, ip=None, now=T0)
    state = login_throttle_state(email=account, ip=None, now=T0)
    # Rest of this window (WINDOW/2), then 1/5 of the next one: 4 failures weigh < 5.
    assert state.retry_after_seconds == WINDOW / 2 + WINDOW / 5
    at_the_end = T0 + state.retry_after_seconds
    assert login_throttle_state(email=account, ip=None, now=at_the_end - 1).throttled
    assert not login_throttle_state(email=account, ip=None, now=at_the_end).throttled


def test_twenty_failures_from_one_ip_throttle_it_for_every_account():
    client_ip = ip()
    for attempt in range(20):
        state = failure(email=email(), ip=client_ip, now=T0 + attempt)
    assert state.throttled_by == "ip" and state.ip_failures == 20
    fresh_account = login_throttle_state(email=email(), ip=client_ip, now=T0 + 30)
    assert fresh_account.throttled_by == "ip"
    assert not login_throttle_state(email=email(), ip=ip(), now=T0 + 30).throttled


def test_limits_come_from_settings(settings):
    settings.LOGIN_THROTTLE_ACCOUNT_FAILURES = 2
    account = email()
    failure(email=account, ip=None, now=T0)
    assert not login_throttle_state(email=account, ip=None, now=T0).throttled
    failure(email=account, ip=None, now=T0)
    assert login_throttle_state(email=account, ip=None, now=T0).throttled


def test_a_complete_sign_in_resets_the_account_but_not_the_ip():
    account, client_ip = email(), ip()
    for _ in range(4):
        failure(email=account, ip=client_ip, now=T0)
    login_throttle_reset_account(email=account, now=T0 + 1)
    state = login_throttle_state(email=account, ip=client_ip, now=T0 + 2)
    assert state.account_failures == 0 and state.ip_failures == 4


def test_counters_carry_the_run_prefix_and_expire(redis_conn):
    account = email()
    failure(email=account, ip="192.0.2.77", now=T0)
    keys = [k.decode() for k in redis_conn.scan_iter(match=f"{RUN_PREFIX}login_throttle:ip:*")]
    ip_keys = [k for k in keys if ":192.0.2.77:" in k]
    assert ip_keys and all(k.startswith(RUN_PREFIX) for k in ip_keys)
    assert account.lower() not in " ".join(keys), "no email address is written to Redis"
    assert 0 < redis_conn.ttl(ip_keys[0]) <= 2 * WINDOW + 1


def test_parallel_attempts_are_counted_before_any_is_checked():
    # The counters were read, the password checked, then a failure counted: 40 parallel
    # attempts all read 0 failures, and 28 passwords of one account were checked.
    account, client_ip = email(), ip()
    with ThreadPoolExecutor(max_workers=20) as pool:
        states = list(
            pool.map(
                lambda _: login_throttle_attempt(email=account, ip=client_ip, now=T0), range(40)
            )
        )
    assert sum(not state.throttled for state in states) == 5
    # The refused ones were not counted: only the 5 checked (and failed) are.
    assert login_throttle_state(email=account, ip=client_ip, now=T0).account_failures == 5


def test_an_attempt_that_passes_is_taken_back_and_a_refused_one_never_counts():
    account, client_ip = email(), ip()
    for _ in range(4):
        failure(email=account, ip=client_ip, now=T0)
    assert not login_throttle_attempt(email=account, ip=client_ip, now=T0).throttled
    login_throttle_attempt_passed(email=account, ip=client_ip, now=T0)
    state = login_throttle_state(email=account, ip=client_ip, now=T0)
    assert (state.account_failures, state.ip_failures) == (4, 4)
    failure(email=account, ip=client_ip, now=T0)
    for _ in range(3):
        assert login_throttle_attempt(email=account, ip=client_ip, now=T0).throttled
    assert login_throttle_state(email=account, ip=client_ip, now=T0).account_failures == 5


def test_taking_back_an_attempt_after_a_reset_leaves_no_negative_count(redis_conn):
    account = email()
    login_throttle_attempt(email=account, ip=None, now=T0)
    login_throttle_reset_account(email=account, now=T0)
    login_throttle_attempt_passed(email=account, ip=None, now=T0)
    assert login_throttle_state(email=account, ip=None, now=T0).account_failures == 0
    for _ in range(5):
        failure(email=account, ip=None, now=T0)
    assert login_throttle_state(email=account, ip=None, now=T0).throttled


def test_failures_from_one_ipv6_64_network_count_together():
    part = uuid.uuid4().int
    network = f"2001:db8:{part % 65536:x}:{part // 65536 % 65536:x}"
    for attempt in range(20):
        state = failure(email=email(), ip=f"{network}::{attempt + 1:x}", now=T0 + attempt)
    assert state.throttled_by == "ip" and state.ip_failures == 20
    assert login_throttle_state(email=email(), ip=f"{network}:1:2:3:4", now=T0 + 30).throttled
    other = f"2001:db8:{part // 2**32 % 65536:x}:{part // 2**48 % 65536:x}::1"
    assert not login_throttle_state(email=email(), ip=other, now=T0 + 30).throttled


def test_a_limit_of_zero_turns_that_limit_off(settings):
    # Every sign-in was refused, and reckoning its Retry-After divided by zero (a 500).
    settings.LOGIN_THROTTLE_ACCOUNT_FAILURES = 0
    account, client_ip = email(), ip()
    for attempt in range(8):
        state = failure(email=account, ip=client_ip, now=T0 + attempt)
    assert not state.throttled and state.account_failures == 8
    settings.LOGIN_THROTTLE_IP_FAILURES = 0
    assert not login_throttle_attempt(email=account, ip=client_ip, now=T0 + 9).throttled

"""The reply hub wakes every request waiting on a command (real Redis pub/sub)."""

import json
import random
import threading
import time

from conftest import wait_until
from exchange.replies import ReplyHub
from matching.transport import replies_channel


def test_two_requests_waiting_on_one_command_are_both_woken(redis_conn):
    # The same client_order_id sent again while the first request still waits: the second
    # waiter replaced the first's wake-up, and the first answered only when its sleep ran out
    # (a second in production; here the hub would sleep a minute).
    hub = ReplyHub(recheck_seconds=60)
    hub._ensure_listening()
    assert hub.connected.wait(10)
    command_id = random.randrange(10**12, 10**13)
    applied = threading.Event()
    answers: list[bool] = []

    def request() -> None:
        answers.append(hub.wait(command_id, done=applied.is_set, timeout=60))

    waiters = [threading.Thread(target=request, daemon=True) for _ in range(2)]
    waiters[0].start()
    wait_until(lambda: command_id in hub._waiters, timeout=10)
    waiters[1].start()
    time.sleep(0.5)  # registered too (had it not, the reply would find it by its id anyway)
    applied.set()
    redis_conn.publish(replies_channel(), json.dumps([command_id]))
    for waiter in waiters:
        waiter.join(timeout=20)
    assert answers == [True, True]
    assert command_id not in hub._waiters

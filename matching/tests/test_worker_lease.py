"""The shard lease: one holder at a time, a standby takes over when the holder dies."""

import json
import os
import signal
import time

import pytest
from django.test import override_settings

from conftest import wait_until
from exchange.embedded_servers import free_port
from exchange.redis_connection import redis_client
from matching.heartbeat import heartbeat_clear, heartbeat_key, heartbeat_write
from matching.models import ShardState
from matching.worker import ShardWorker

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]


def heartbeat(redis_conn, shard: int = 0) -> dict | None:
    value = redis_conn.get(heartbeat_key(shard))
    return json.loads(value) if value else None


def test_worker_takes_the_lease_and_bumps_the_epoch(processes, process_env, redis_conn):
    before = ShardState.objects.filter(shard=0).values_list("lease_epoch", flat=True).first() or 0
    worker = processes.manage("run_matching", "--shard", "0", env=process_env, name="w")
    beat = wait_until(lambda: heartbeat(redis_conn), timeout=30)
    assert beat["pid"] == worker.pid
    state = ShardState.objects.get(shard=0)
    assert state.lease_epoch == beat["epoch"] == before + 1
    assert state.holder.endswith(f":{worker.pid}")


def test_standby_takes_over_within_seconds_when_the_holder_is_killed(
    processes, process_env, redis_conn
):
    holder = processes.manage("run_matching", "--shard", "0", env=process_env, name="holder")
    first = wait_until(lambda: heartbeat(redis_conn), timeout=30)
    assert first["pid"] == holder.pid
    standby = processes.manage("run_matching", "--shard", "0", env=process_env, name="standby")
    # The standby waits: the holder keeps beating and keeps its epoch.
    wait_until(lambda: "waiting for lease" in standby.log_path.read_text(), timeout=30)
    assert heartbeat(redis_conn)["pid"] == holder.pid

    os.killpg(holder.pid, signal.SIGKILL)
    taken = wait_until(
        lambda: (beat := heartbeat(redis_conn)) and beat["pid"] == standby.pid and beat,
        timeout=10,
    )
    assert taken["epoch"] == first["epoch"] + 1
    assert ShardState.objects.get(shard=0).lease_epoch == taken["epoch"]


def test_a_live_holder_is_not_fenced_however_short_the_staleness_limit(
    processes, process_env, redis_conn
):
    # The holder's lease session is touched from a thread, not only between batches.
    env = {**process_env, "MATCHING_LEASE_STALE_SECONDS": "0.5"}
    holder = processes.manage("run_matching", "--shard", "0", env=env, name="holder")
    first = wait_until(lambda: heartbeat(redis_conn), timeout=30)
    standby = processes.manage("run_matching", "--shard", "0", env=env, name="standby")
    wait_until(lambda: "waiting for lease" in standby.log_path.read_text(), timeout=30)
    time.sleep(4)
    assert heartbeat(redis_conn)["pid"] == holder.pid
    assert ShardState.objects.get(shard=0).lease_epoch == first["epoch"]
    assert "terminated" not in standby.log_path.read_text()


def test_a_fenced_holder_leaves_its_successors_heartbeat(redis_conn):
    heartbeat_write(client=redis_conn, shard=0, epoch=8, pid=123, ttl_ms=5000)
    assert heartbeat_clear(client=redis_conn, shard=0, epoch=7) is False
    assert heartbeat(redis_conn)["epoch"] == 8
    assert heartbeat_clear(client=redis_conn, shard=0, epoch=8) is True
    assert heartbeat(redis_conn) is None


def test_worker_stops_cleanly_and_clears_its_heartbeat(processes, process_env, redis_conn):
    worker = processes.manage("run_matching", "--shard", "0", env=process_env, name="w")
    wait_until(lambda: heartbeat(redis_conn), timeout=30)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0
    assert heartbeat(redis_conn) is None


def test_unknown_shard_is_refused(processes, process_env):
    worker = processes.manage("run_matching", "--shard", "5", env=process_env, name="w")
    assert worker.wait(timeout=30) != 0
    assert "shard 5 does not exist: MATCHING_SHARDS is 1" in worker.log_path.read_text()


def test_a_new_holder_removes_its_predecessors_from_the_command_streams_group(
    processes, process_env, redis_conn
):
    """Every worker restart left its consumer in the stream's group for good, with the signals
    it had read and not acknowledged pending: the group's pending count only grew."""
    import socket

    import redis

    from exchange.tests.api_client import make_user
    from matching.publish import CONSUMER_GROUP
    from matching.tests.order_rows import instrument_create, order_row_place
    from matching.transport import command_stream_key

    stream = command_stream_key(0)

    def consumers() -> set[str]:
        try:
            listed = redis_conn.xinfo_consumers(stream, CONSUMER_GROUP)
        except redis.ResponseError:  # no stream or group yet
            return set()
        return {c["name"].decode() if isinstance(c["name"], bytes) else c["name"] for c in listed}

    instrument = instrument_create()
    first = processes.manage("run_matching", "--shard", "0", env=process_env, name="first")
    first_name = f"{socket.gethostname()}:{first.pid}"
    wait_until(lambda: "shard worker serving" in first.log_path.read_text(), timeout=30)
    # A signal read: the group knows a consumer by what it was delivered.
    order_row_place(user=make_user(), instrument=instrument, side="buy", quantity="1",
                    price="10.00")  # fmt: skip
    wait_until(lambda: first_name in consumers(), timeout=30)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    second = processes.manage("run_matching", "--shard", "0", env=process_env, name="second")
    wait_until(lambda: "shard worker serving" in second.log_path.read_text(), timeout=30)
    assert first_name not in consumers()


def test_a_heartbeat_redis_refuses_is_logged_when_the_outage_starts_and_ends(redis_conn, caplog):
    # The worker beats every second: with Redis out of reach it logged a warning at each beat,
    # a line a second for as long as the outage lasted.
    worker = ShardWorker(shard=0)
    worker.lease.epoch = 1
    redis_client.cache_clear()
    try:
        with caplog.at_level("INFO", logger="matching.worker"):
            with override_settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"):
                assert [worker._beat() for _ in range(3)] == [None, None, None]
                redis_client.cache_clear()
            assert worker._beat() is False and worker._beat() is True
    finally:
        redis_client.cache_clear()
    redis_conn.delete(heartbeat_key(0))
    assert [record.getMessage() for record in caplog.records] == [
        "heartbeat not written",
        "heartbeat written again",
    ]

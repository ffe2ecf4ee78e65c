"""The shard's command stream keeps one consumer: the worker holding the lease."""

import os
import signal

import pytest
import redis

from conftest import wait_until
from matching.models import ShardState
from matching.publish import CONSUMER_GROUP
from matching.tests.test_worker_lease import heartbeat
from matching.transport import command_stream_key

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]


def consumers(redis_conn) -> dict[str, int]:
    """Consumer name -> signals read and not acknowledged (none before the group exists)."""
    try:
        found = redis_conn.xinfo_consumers(command_stream_key(0), CONSUMER_GROUP)
    except redis.ResponseError:
        return {}
    return {c["name"].decode(): c["pending"] for c in found}


def serving_consumer(processes, env, redis_conn, name: str) -> tuple[str, object]:
    """Start a shard-0 worker and wait until it has read a signal; its consumer name."""
    worker = processes.manage("run_matching", "--shard", "0", env=env, name=name)
    wait_until(lambda: (heartbeat(redis_conn) or {}).get("pid") == worker.pid, timeout=45)
    holder = ShardState.objects.get(shard=0).holder  # host:pid, its consumer name
    # A signal (no command behind it): the worker reads it as its consumer (a group created
    # after it reads the stream from its start).
    redis_conn.xadd(command_stream_key(0), {"id": -1})
    wait_until(lambda: holder in consumers(redis_conn), timeout=10)
    return holder, worker


def test_a_worker_taking_the_shard_drops_the_consumers_of_the_workers_before_it(
    processes, process_env, redis_conn
):
    first, worker = serving_consumer(processes, process_env, redis_conn, "first")
    os.killpg(worker.pid, signal.SIGKILL)  # with what it read not acknowledged
    worker.wait()
    assert first in consumers(redis_conn)
    second, _ = serving_consumer(processes, process_env, redis_conn, "second")
    assert set(consumers(redis_conn)) == {second}

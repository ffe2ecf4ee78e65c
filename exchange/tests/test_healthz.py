"""GET /healthz over HTTP against the real web process, in each state of the deployment."""

from datetime import timedelta

import httpx
import pytest
from django.db import transaction
from django.utils import timezone

from conftest import celery_command, start_web, wait_until
from exchange.embedded_servers import free_port
from exchange.health import scheduler_heartbeat_key
from matching.heartbeat import heartbeat_clear, heartbeat_write
from matching.models import Command
from matching.services import command_enqueue

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]


def health(base_url: str) -> httpx.Response:
    return httpx.get(f"{base_url}/healthz", timeout=10)


def test_all_up_with_a_live_shard_worker_and_scheduler_is_ok(processes, process_env):
    env = {**process_env, "SCHEDULER_HEARTBEAT_SECONDS": "1"}
    processes.manage("run_matching", "--shard", "0", env=env, name="matching-0")
    processes.start(celery_command("worker", "--pool", "solo"), env=env, name="celery-worker")
    processes.start(celery_command("beat"), env=env, name="celery-beat")
    base_url = start_web(processes, env=env)

    response = wait_until(
        lambda: (r := health(base_url)).json()["status"] == "ok" and r, timeout=30
    )
    assert response.status_code == 200
    body = response.json()
    assert body["failing"] == []
    assert body["components"]["postgres"] == {"status": "ok"}
    assert body["components"]["redis"] == {"status": "ok"}
    assert body["components"]["matching-shard-0"]["status"] == "ok"
    assert body["components"]["matching-shard-0"]["epoch"] >= 1
    assert body["components"]["matching-shard-0"]["backlog"]["oldest_seconds"] < 5
    assert body["components"]["scheduler"]["status"] == "ok"
    assert 0 <= body["components"]["scheduler"]["last_run_seconds_ago"] < 30


def no_scheduler_heartbeat(redis_conn) -> None:
    """As if no Celery had run lately (the all-up test's lasts 30 s)."""
    redis_conn.delete(scheduler_heartbeat_key())


def test_scheduler_without_celery_is_degraded_and_named(processes, process_env, redis_conn):
    # Celery beat and worker expire quiet books' GTD/DAY orders and seal the audit trail; with
    # both dead /healthz said "ok".
    no_scheduler_heartbeat(redis_conn)
    processes.manage("run_matching", "--shard", "0", env=process_env, name="matching-0")
    base_url = start_web(processes, env=process_env)
    body = wait_until(
        lambda: (
            (b := health(base_url).json())["components"]["matching-shard-0"]["status"] == "ok" and b
        ),
        timeout=30,
    )
    assert body["status"] == "degraded"
    assert body["failing"] == ["scheduler"]
    assert body["components"]["scheduler"] == {
        "status": "down",
        "error": "no scheduled task ran in the last 30 s (Celery beat or worker down)",
    }


def test_shard_without_a_worker_is_degraded_and_named(processes, process_env, redis_conn):
    no_scheduler_heartbeat(redis_conn)
    base_url = start_web(processes, env={**process_env, "MATCHING_SHARDS": "2"})
    response = health(base_url)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["failing"] == ["matching-shard-0", "matching-shard-1", "scheduler"]
    assert body["components"]["matching-shard-1"] == {
        "status": "down",
        "error": "no heartbeat",
        "backlog": {"commands": 0, "oldest_seconds": 0.0},
    }


def test_redis_down_is_degraded_naming_redis(processes, process_env):
    dead_port = free_port()
    dead_redis = f"redis://127.0.0.1:{dead_port}/0"
    base_url = start_web(processes, env={**process_env, "REDIS_URL": dead_redis})
    response = health(base_url)
    assert response.status_code == 200
    # Public: the driver's message (the server's address and port) stays in the log.
    assert str(dead_port) not in response.text
    body = response.json()
    assert body["status"] == "degraded"
    assert "redis" in body["failing"]
    assert body["components"]["redis"]["status"] == "down"
    assert body["components"]["postgres"] == {"status": "ok"}
    assert body["components"]["matching-shard-0"]["status"] == "unknown"
    assert body["components"]["scheduler"]["status"] == "unknown"


def test_postgres_unreachable_is_503(processes, process_env):
    dead_port = free_port()
    dead_db = f"postgres://postgres@127.0.0.1:{dead_port}/exchange"
    base_url = start_web(processes, env={**process_env, "DATABASE_URL": dead_db})
    response = health(base_url)
    assert response.status_code == 503
    # The driver's message had been sent to anyone: the database server's address and port
    # (and, for others, its user and database names). It stays in the log.
    assert str(dead_port) not in response.text and "127.0.0.1" not in response.text
    body = response.json()
    assert body["status"] == "down"
    assert body["components"]["postgres"]["status"] == "down"
    assert "postgres" in body["failing"]


@pytest.mark.parametrize(
    "name",
    [
        "audit-seal",
        "matching-expire-due",
        "exchange-scheduler-heartbeat",
        "exchange-stalled-sessions-end",
    ],
)
def test_a_frequent_task_beat_queued_expires_unrun_after_ten_seconds(name):
    # django-celery-beat takes `expire_seconds` (an `expires` option would be dropped silently):
    # with the worker down, beat queued one of each a second, all run late when it came back.
    from django.conf import settings
    from django_celery_beat.schedulers import ModelEntry

    from exchange.celery import app

    app.loader.import_default_modules()
    entry = ModelEntry.from_entry(name, app=app, **settings.CELERY_BEAT_SCHEDULE[name])
    assert entry.task in app.tasks
    assert entry.options["expires"] == 10


def test_commands_queued_for_a_shard_no_worker_serves_are_named(processes, process_env):
    """An instrument moved to a shard beyond MATCHING_SHARDS: its orders and cancels waited
    for good while /healthz said ok (helper 49)."""
    from matching.services import command_enqueue

    with transaction.atomic():
        command_enqueue(shard=3, kind="mass_cancel", payload={"user_id": 1, "symbol": None})
    base_url = start_web(processes, env=process_env)
    body = health(base_url).json()
    assert body["status"] == "degraded" and "unserved-shards" in body["failing"]
    assert body["components"]["unserved-shards"]["error"].endswith("shard 3: 1")


def test_a_shard_whose_worker_cannot_reach_redis_is_degraded_not_down(
    processes, process_env, redis_conn
):
    # Its heartbeat lives in Redis only: a worker matching away (commands come from
    # PostgreSQL) behind a Redis it could not reach read "down: no heartbeat".
    no_scheduler_heartbeat(redis_conn)
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    processes.manage(
        "run_matching", "--shard", "0", env={**process_env, "REDIS_URL": dead_redis}, name="m-0"
    )
    base_url = start_web(processes, env=process_env)
    body = wait_until(
        lambda: (
            (b := health(base_url).json())["components"]["matching-shard-0"]["status"] == "degraded"
            and b
        ),
        timeout=30,
    )
    assert body["status"] == "degraded" and "matching-shard-0" in body["failing"]
    assert "holds the shard's lease" in body["components"]["matching-shard-0"]["error"]


def test_a_live_shard_whose_commands_wait_is_degraded_with_its_backlog(
    processes, process_env, redis_conn
):
    # A worker alive (its heartbeat fresh) but behind, overloaded or failing each batch: its
    # orders were accepted and waited, answered 202 pending_new, while /healthz said "ok".
    # The heartbeat is written here for a worker that does not run, so the command waits.
    no_scheduler_heartbeat(redis_conn)
    heartbeat_write(client=redis_conn, shard=0, epoch=1, pid=4242, ttl_ms=60_000)
    try:
        with transaction.atomic():
            for _ in range(2):
                command_enqueue(shard=0, kind="mass_cancel", payload={"user_id": 1, "symbol": None})
        base_url = start_web(processes, env={**process_env, "HEALTH_BACKLOG_SECONDS": "30"})
        shard = health(base_url).json()["components"]["matching-shard-0"]
        assert shard["status"] == "ok" and shard["backlog"]["commands"] == 2  # not waited long
        Command.objects.filter(shard=0, applied_at=None).update(
            created_at=timezone.now() - timedelta(seconds=45)
        )
        body = health(base_url).json()
    finally:
        heartbeat_clear(client=redis_conn, shard=0, epoch=1)
    assert body["status"] == "degraded"
    assert body["failing"] == ["matching-shard-0", "scheduler"]
    shard = body["components"]["matching-shard-0"]
    assert shard["status"] == "degraded" and shard["pid"] == 4242
    assert shard["backlog"]["commands"] == 2 and 45 <= shard["backlog"]["oldest_seconds"] < 90
    assert "waited" in shard["error"] and "HEALTH_BACKLOG_SECONDS=30" in shard["error"]

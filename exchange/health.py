"""The health of the deployment's parts, as /healthz reports it."""

import json
import logging
import socket
import time

import psycopg
import redis
from django.conf import settings

from exchange.redis_connection import redis_client, redis_key
from matching.heartbeat import heartbeats_read
from matching.lease import LEASE_LOCK_CLASS, database_conninfo

logger = logging.getLogger(__name__)

HEALTH_STATUSES = ("ok", "degraded", "down")


def scheduler_heartbeat_key() -> str:
    return redis_key("scheduler", "heartbeat")


def scheduler_heartbeat_write() -> None:
    """Record that a scheduled task ran just now (so beat scheduled it and a worker ran it);
    it expires after `SCHEDULER_HEARTBEAT_TTL_SECONDS`."""
    value = json.dumps({"ts_ms": int(time.time() * 1000), "host": socket.gethostname()})
    redis_client().set(
        scheduler_heartbeat_key(), value, px=int(settings.SCHEDULER_HEARTBEAT_TTL_SECONDS * 1000)
    )


# Unapplied commands of shards beyond MATCHING_SHARDS (the poll's partial index has them).
UNSERVED_COMMANDS_SQL = (
    "SELECT shard, count(*) FROM matching_command "
    "WHERE applied_at IS NULL AND shard >= %s GROUP BY shard ORDER BY shard"
)
# Each served shard's backlog: its unapplied commands (counted up to BACKLOG_COUNT_LIMIT, so a
# long outage's backlog costs a bounded read) and how long the oldest has waited (ids follow
# the commit order, see matching.services.COMMAND_ORDER_LOCK_KEY). Both from the partial index
# of unapplied commands the worker polls.
BACKLOG_COUNT_LIMIT = 100_000
SHARD_BACKLOG_SQL = """
SELECT s.shard,
       (SELECT count(*) FROM (SELECT FROM matching_command c
                               WHERE c.shard = s.shard AND c.applied_at IS NULL
                               LIMIT %(limit)s) w),
       (SELECT extract(epoch FROM clock_timestamp() - c.created_at)::float8
          FROM matching_command c
         WHERE c.shard = s.shard AND c.applied_at IS NULL
         ORDER BY c.id LIMIT 1)
  FROM generate_series(0, %(shards)s - 1) AS s(shard)
"""
# The shards whose lease lock a session holds (the two-key advisory form, objsubid 2): a worker
# serves them, whatever Redis says.
LEASED_SHARDS_SQL = """
SELECT l.objid::int FROM pg_locks l
 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid = %s
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def health_status() -> tuple[dict, int]:
    """Check PostgreSQL, Redis, every shard's heartbeat and the scheduler's; return (report,
    HTTP status).

    PostgreSQL down is 503 (nothing can be accepted durably). Redis, a shard or the scheduler
    down is a 200 `degraded` naming the component: orders are still accepted durably then.
    """
    components: dict[str, dict] = {}
    queued: list[tuple[int, int]] = []
    leased: set[int] = set()
    backlogs: dict[int, dict] = {}
    try:
        # A connection of its own with a short timeout: the pool would wait its full timeout.
        with psycopg.connect(database_conninfo(), connect_timeout=2) as conn:
            queued = conn.execute(UNSERVED_COMMANDS_SQL, [settings.MATCHING_SHARDS]).fetchall()
            leased = {row[0] for row in conn.execute(LEASED_SHARDS_SQL, [LEASE_LOCK_CLASS])}
            backlogs = {
                shard: _backlog(waiting, oldest)
                for shard, waiting, oldest in conn.execute(
                    SHARD_BACKLOG_SQL,
                    {"limit": BACKLOG_COUNT_LIMIT, "shards": settings.MATCHING_SHARDS},
                )
            }
        components["postgres"] = {"status": "ok"}
    except psycopg.Error as exc:
        components["postgres"] = {"status": "down", "error": _unreachable("postgres", exc)}
    if queued:
        # Commands no worker will ever take: an instrument on a shard beyond MATCHING_SHARDS
        # (its orders and cancels had waited for good while this said ok).
        components["unserved-shards"] = {
            "status": "down",
            "error": f"commands queued for shards no worker serves (MATCHING_SHARDS="
            f"{settings.MATCHING_SHARDS}): "
            + ", ".join(f"shard {shard}: {count}" for shard, count in queued),
        }

    heartbeats: dict[int, dict | None] | None = None
    scheduler_beat: bytes | None = None
    try:
        client = redis_client()
        client.ping()
        components["redis"] = {"status": "ok"}
        heartbeats = heartbeats_read(client=client, shard_count=settings.MATCHING_SHARDS)
        scheduler_beat = client.get(scheduler_heartbeat_key())
    except redis.RedisError as exc:
        components["redis"] = {"status": "down", "error": _unreachable("redis", exc)}

    for shard in range(settings.MATCHING_SHARDS):
        name = f"matching-shard-{shard}"
        if heartbeats is None:
            components[name] = {"status": "unknown", "error": "Redis is down"}
        elif heartbeats[shard] is None and shard in leased:
            # A worker holds the lease, so it matches (its commands come from PostgreSQL), but
            # its heartbeat does not reach Redis: neither do its market data and replies. It had
            # read "down" while orders still filled.
            components[name] = {
                "status": "degraded",
                "error": "no heartbeat in Redis, yet a worker holds the shard's lease: it "
                "matches, but its market data and replies do not get through",
            }
        elif heartbeats[shard] is None:
            components[name] = {"status": "down", "error": "no heartbeat"}
        else:
            beat = heartbeats[shard]
            components[name] = {"status": "ok", "epoch": beat["epoch"], "pid": beat["pid"]}
        backlog = backlogs.get(shard)
        if backlog is None:
            continue
        components[name]["backlog"] = backlog
        waited = backlog["oldest_seconds"]
        if components[name]["status"] == "ok" and waited > settings.HEALTH_BACKLOG_SECONDS:
            # A live worker that is behind (overloaded, or each batch failing and retried):
            # its orders are accepted and wait, answered 202 pending_new; it had read "ok".
            components[name]["status"] = "degraded"
            components[name]["error"] = (
                f"the shard's oldest unapplied command has waited {waited:g} s "
                f"(more than HEALTH_BACKLOG_SECONDS={settings.HEALTH_BACKLOG_SECONDS:g}): "
                "its worker is behind"
            )

    # Celery beat and worker: expiry of quiet books, audit sealing, fee tiers, quote presence.
    if heartbeats is None:
        components["scheduler"] = {"status": "unknown", "error": "Redis is down"}
    elif scheduler_beat is None:
        components["scheduler"] = {
            "status": "down",
            "error": "no scheduled task ran in the last "
            f"{settings.SCHEDULER_HEARTBEAT_TTL_SECONDS:g} s (Celery beat or worker down)",
        }
    else:
        age = time.time() - json.loads(scheduler_beat)["ts_ms"] / 1000
        components["scheduler"] = {"status": "ok", "last_run_seconds_ago": round(age, 1)}

    failing = sorted(name for name, part in components.items() if part["status"] != "ok")
    if components["postgres"]["status"] != "ok":
        status, http_status = "down", 503
    elif failing:
        status, http_status = "degraded", 200
    else:
        status, http_status = "ok", 200
    return {"status": status, "failing": failing, "components": components}, http_status


def _backlog(waiting: int, oldest_seconds: float | None) -> dict:
    """A shard's backlog as reported: `commands` waiting (with `at_least` once the count
    reached its limit) and `oldest_seconds`, how long the oldest has waited (0 when none)."""
    backlog = {"commands": waiting, "oldest_seconds": round(max(oldest_seconds or 0.0, 0.0), 1)}
    if waiting >= BACKLOG_COUNT_LIMIT:
        backlog["at_least"] = True
    return backlog


def _unreachable(component: str, exc: Exception) -> str:
    """The public answer names the kind of failure; the driver's message, which holds the
    server's address and port (and may hold its user and database names), goes to the log."""
    text = str(exc).strip() or type(exc).__name__
    logger.warning("health: %s unreachable: %s", component, text.splitlines()[0])
    return f"{type(exc).__name__} (the reason is in the web process's log)"
